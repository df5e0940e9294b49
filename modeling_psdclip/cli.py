"""Deprecated alias, kept for one release: these general helpers are `modeling_psdclip.utils` now."""

from .utils import OneLineErrorParser, fail, first_line, write_json_atomically  # noqa: F401
