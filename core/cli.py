"""Command-line plumbing shared by the scripts: YAML defaults, flag checks, one-line errors."""
import argparse
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


def _config_value(action: argparse.Action, key: str, value: Any, path: str) -> Any:
    """Checks and converts one YAML value the way argparse would convert the same flag."""
    def convert(v: Any) -> Any:
        if action.type is None or v is None:
            return v
        expected = getattr(action.type, "__name__", str(action.type)).replace("_", " ")
        bad = UsageError(f"{path}: {key}: {v!r} is not a valid value (expected {expected}); fix the config file")
        if isinstance(v, (bool, list, dict)):
            raise bad
        try:
            return action.type(v)
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            raise bad from None

    if isinstance(action, (argparse.BooleanOptionalAction, argparse._StoreTrueAction,
                           argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise UsageError(f"{path}: {key}: expected true or false, got {value!r}; fix the config file")
        return value
    if action.nargs in ("+", "*") or isinstance(action.nargs, int):
        if not isinstance(value, list):
            raise UsageError(f"{path}: {key}: expected a list, got {value!r}; fix the config file")
        value = [convert(v) for v in value]
    else:
        if isinstance(value, (list, dict)):
            raise UsageError(f"{path}: {key}: expected a single value, got {value!r}; fix the config file")
        value = convert(value)
    if action.choices is not None:
        for v in value if isinstance(value, list) else [value]:
            if v not in action.choices:
                raise UsageError(f"{path}: {key}: {v!r} is not one of {list(action.choices)}; fix the config file")
    return value


def load_config_defaults(parser: argparse.ArgumentParser, path: str) -> Dict[str, Any]:
    """Reads a YAML config and returns it as checked parser defaults; unknown keys are an error."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{path}: config file not found; check --config")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"{path}: not valid YAML ({str(e).splitlines()[0]}); fix the config file") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping of flag names to values; fix the config file")
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    defaults = {}
    for key, value in data.items():
        dest = str(key).lstrip("-").replace("-", "_")
        if dest not in actions:
            raise UsageError(f"{path}: unknown key {key!r}; valid keys are the flag names, e.g. "
                             f"{', '.join(sorted(actions)[:6])}, ... (see --help)")
        defaults[dest] = _config_value(actions[dest], str(key), value, path)
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
    sys.exit(code or 0)


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


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be zero or a positive number, got {text}")
    return value
