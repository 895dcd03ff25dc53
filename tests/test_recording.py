"""The run directory and its records (recording/): file names, the text and JSON records, history read back."""





def test_a_run_directory_whose_name_is_not_utf8_is_logged(tmp_path):
    """Undecodable bytes in a path (a file name from another system) reach the log escaped, not as a
    "--- Logging error ---" traceback on the console."""
    from recording.run_dir import setup_logging

    out = tmp_path / "run\udcff"  # the byte 0xff, as Python decodes it from a file name
    out.mkdir()
    log = setup_logging(out, True)
    log.info(f"run directory {out}")
    for handler in log.handlers:
        handler.flush()
    assert "run\\udcff" in (out / "train.log").read_text(encoding="utf-8")
    for handler in log.handlers:
        handler.close()
    log.handlers.clear()
