"""Command-line plumbing shared by the scripts: YAML defaults, flag checks, one-line errors."""
import argparse
import math
import os
import re
import reprlib
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

import yaml


class UsageError(ValueError):
    """A mistake in the command line or the config file."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, unless its help already explains it or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose errors are one line (argparse prints the whole usage block before them)."""

    def error(self, message: str) -> None:
        self.exit(2, f"error: {message}; see {self.prog} --help\n")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE.yaml", default=None,
                        help="YAML file of defaults (keys are flag names); flags given on the command line win")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")


# Values in messages are shown through a bounded repr: a YAML alias bomb (a few hundred bytes whose nested
# aliases expand to billions of elements) must not be expanded just to say that it is wrong.
_SHOW = reprlib.Repr()
_SHOW.maxlevel, _SHOW.maxlist, _SHOW.maxdict, _SHOW.maxstring, _SHOW.maxother = 2, 4, 4, 60, 60
# A config file is a few lines of flags; anything this large is another file given by mistake.
MAX_CONFIG_BYTES = 1 << 20


def shown(value: Any) -> str:
    """repr(value), bounded in depth, length and size (safe for self-referencing or alias-expanded values)."""
    return _SHOW.repr(value)


def _is_flag_switch(action: argparse.Action) -> bool:
    return isinstance(action, (argparse.BooleanOptionalAction, argparse._StoreTrueAction,
                               argparse._StoreFalseAction))


def _config_value(action: argparse.Action, key: str, value: Any, path: str) -> Any:
    """Checks and converts one YAML value the way argparse would convert the same flag given as text."""
    def bad(v: Any, expected: str) -> UsageError:
        return UsageError(f"{path}: {key}: {shown(v)} is not a valid value (expected {expected}); fix the config "
                          f"file")

    def convert(v: Any) -> Any:
        if action.type is None:  # a string flag: paths, names, choices
            if not isinstance(v, str):
                raise bad(v, "a string; quote it if it is meant as one")
            # The shell expands ~ on a command line; a config file has no shell.
            return os.path.expanduser(v) if v.startswith("~") else v
        expected = getattr(action.type, "__name__", str(action.type)).replace("_", " ")
        # argparse converts the text of a flag; converting the text of the YAML value keeps the two the same
        # (int(5.7) would silently be 5, where --epochs 5.7 is an error).
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            raise bad(v, expected)
        try:
            return action.type(str(v))
        except argparse.ArgumentTypeError as e:  # the type's own words: "must be a finite positive number"
            raise bad(v, f"{expected}: {e}") from None
        except (TypeError, ValueError):
            raise bad(v, expected) from None

    if value is None:
        if action.default is None and not _is_flag_switch(action):
            return None  # the flag's own "not given"
        raise UsageError(f"{path}: {key}: null (~ or an empty value) is not a valid value; give a value or remove "
                         f"the key to keep the default ({shown(action.default)})")
    if _is_flag_switch(action):
        if not isinstance(value, bool):
            raise UsageError(f"{path}: {key}: expected true or false, got {shown(value)}; fix the config file")
        return value
    if action.nargs in ("+", "*") or isinstance(action.nargs, int):
        if not isinstance(value, list):
            raise UsageError(f"{path}: {key}: expected a list, got {shown(value)}; fix the config file")
        count = action.nargs if isinstance(action.nargs, int) else 1 if action.nargs == "+" else 0
        if len(value) < count or (isinstance(action.nargs, int) and len(value) != count):
            raise UsageError(f"{path}: {key}: expected {'' if isinstance(action.nargs, int) else 'at least '}"
                             f"{count} values, got {len(value)}; fix the config file")
        value = [convert(v) for v in value]
    else:
        if isinstance(value, (list, dict)):
            raise UsageError(f"{path}: {key}: expected a single value, got {shown(value)}; fix the config file")
        value = convert(value)
    if action.choices is not None:
        for v in value if isinstance(value, list) else [value]:
            if v not in action.choices:
                raise UsageError(f"{path}: {key}: {shown(v)} is not one of {list(action.choices)}; fix the config "
                                 f"file")
    return value


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error: PyYAML keeps the last one
    silently, so `epochs: 1` ... `epochs: 5` would train 5 epochs without a word."""

    path = ""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: Dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` merges keys; it is not a key itself
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise UsageError(f"{self.path}: {shown(key)} is given twice (lines {seen[key]} and {line}); "
                                     f"keep one of them")
                seen[key] = line
            except TypeError:  # an unhashable key: SafeLoader's own error says so
                continue
        return super().construct_mapping(node, deep)


def read_config(path: str) -> Any:
    """The YAML document of `path`, or a UsageError saying why it cannot be one."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError(f"{path}: config file not found; check --config")
    try:
        if p.stat().st_size > MAX_CONFIG_BYTES:
            raise UsageError(f"{path}: {p.stat().st_size / 2**20:.0f} MiB is not a config file (a YAML file of "
                             f"flag names and values); check --config")
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: not UTF-8 text (byte {e.start}); save the config file as UTF-8") from None
    except OSError as e:
        raise UsageError(f"{path}: cannot read the config file ({e.strerror or e}); check --config") from None
    loader = type("Loader", (_UniqueKeyLoader,), {"path": path})
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        raise UsageError(f"{path}: not valid YAML ({str(e).splitlines()[0]}); fix the config file") from None
    except RecursionError:  # PyYAML composes nested lists recursively
        raise UsageError(f"{path}: nested too deeply to be a config file; fix the config file") from None


def load_config_defaults(parser: argparse.ArgumentParser, path: str) -> Dict[str, Any]:
    """Reads a YAML config and returns it as checked parser defaults; unknown keys are an error."""
    data = read_config(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping of flag names to values, got {type(data).__name__}; fix the "
                         f"config file")
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    defaults = {}
    for key, value in data.items():
        name = key if isinstance(key, str) else shown(key)
        dest = name.lstrip("-").replace("-", "_")
        if dest not in actions:
            raise UsageError(f"{path}: unknown key {shown(name)}; valid keys are the flag names, e.g. "
                             f"{', '.join(sorted(actions)[:6])}, ... (see --help)")
        if dest in defaults:  # batch-size and batch_size: which one was meant?
            raise UsageError(f"{path}: {shown(name)} sets {dest} a second time; keep one of the two keys")
        defaults[dest] = _config_value(actions[dest], name, value, path)
    return defaults


def parse_with_config(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parses argv, first applying the defaults of --config FILE.yaml when given."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    pre.add_argument("--debug", action="store_true")
    known, _ = pre.parse_known_args(argv)
    if known.config:
        try:
            parser.set_defaults(**load_config_defaults(parser, known.config))
        except UsageError as e:
            fail(e, known.debug)
    return parser.parse_args(argv)


class _Unset:
    """Marks a flag the command line did not set (argparse leaves an attribute it finds in place)."""


def given_on_command_line(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> set:
    """The dests of the flags `argv` (default: sys.argv[1:]) sets itself, as opposed to the values a --config
    file or the parser's defaults supply: a second parse into a namespace where every dest is unset."""
    unset = _Unset()
    namespace = argparse.Namespace(**{a.dest: unset for a in parser._actions if a.dest != argparse.SUPPRESS})
    parsed = parser.parse_args(argv, namespace=namespace)
    return {dest for dest, value in vars(parsed).items() if value is not unset}


def fail(error: BaseException, debug: bool = False, code: int = 2) -> None:
    """Prints `error: <message>` (one line; the full traceback with --debug) and exits with `code`."""
    if debug:
        traceback.print_exception(type(error), error, error.__traceback__)
    print(f"error: {one_line(error)}", file=sys.stderr)
    sys.exit(code)


def one_line(error: BaseException) -> str:
    """The message of `error`, reduced to one line (DataLoader workers wrap it in a traceback)."""
    text = str(error).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1]
        text = text.split(": ", 1)[1] if ": " in text else text
    if not text:
        text = type(error).__name__
    return " ".join(text.split())


# Errors a user can cause end as one line; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, FloatingPointError,
               UsageError)


def run_main(main: Callable[[argparse.Namespace], Optional[int]], args: argparse.Namespace) -> None:
    """Runs main(args) and turns user errors into `error: <one line>` with exit code 1."""
    try:
        code = main(args)
    except USER_ERRORS as e:
        fail(e, getattr(args, "debug", False), code=1)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as e:  # disk full, I/O errors: name the file when the OS does
        fail(e, getattr(args, "debug", False), code=1)
    except RuntimeError as e:
        if not is_out_of_memory(e):
            raise  # a bug: keep the traceback
        fail(RuntimeError(f"out of memory{_allocation(str(e))}; lower -b/--batch-size, --crop-size or --eval-size, "
                          f"use --amp, or --mode slide for large images"), getattr(args, "debug", False), code=1)
    sys.exit(code or 0)


def _allocation(text: str) -> str:
    """" (tried to allocate 111.8 GiB)" from the CPU allocator's or CUDA's message, else ""."""
    found = re.search(r"(?i)tried to allocate (\d+) bytes", text)
    if found:
        return f" (tried to allocate {int(found.group(1)) / 2**30:.1f} GiB)"
    found = re.search(r"(?i)tried to allocate ([\d.]+ [KMGT]iB)", text)
    return f" (tried to allocate {found.group(1)})" if found else ""


def is_out_of_memory(error: BaseException) -> bool:
    """An allocation failure: torch.OutOfMemoryError on a GPU, the CPU allocator's RuntimeError otherwise (a
    size a user chose, such as --eval-size, is the usual cause, not a bug)."""
    text = str(error)
    return type(error).__name__ == "OutOfMemoryError" or "out of memory" in text or "can't allocate memory" in text


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or a positive integer, got {text}")
    return value


def seed(text: str) -> int:
    """A random seed: 0 .. 2**32 - 1, what every generator (Python, NumPy, torch) accepts."""
    value = int(text)
    if not 0 <= value < 2 ** 32:
        raise argparse.ArgumentTypeError(f"must be an integer in 0..{2 ** 32 - 1}, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):  # inf passes `> 0`, and no setting means infinity here
        raise argparse.ArgumentTypeError(f"must be a finite positive number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be zero or a finite positive number, got {text}")
    return value
