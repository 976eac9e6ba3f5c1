"""Errors that reach the user as one line and exit code 2 (bad input), never as a traceback."""


class ProgtuneError(Exception):
    """Bad input or environment: the message names the problem and the fix."""

    exit_code = 2


class ConfigError(ProgtuneError):
    """An unknown key or an invalid value in a config file, preset or KEY=VALUE override."""


class DataError(ProgtuneError):
    """A corpus or tokenizer that cannot be used."""


class ResultsError(ProgtuneError):
    """A results folder or Parquet file that cannot be read or written."""


def one_line_reason(exc: BaseException) -> str:
    """An exception's message squeezed onto one line (library messages span several)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."
