"""The exceptions callvault raises. One module, so callers catch by meaning."""


class CallvaultError(Exception):
    """Base class of every error callvault raises on purpose."""


class InputError(CallvaultError):
    """An input (file, capture, argument) cannot be used; the message says why."""


class CodecError(CallvaultError):
    """A codec library (libopus) reported an error."""

    def __init__(self, function: str, code: int, message: str) -> None:
        super().__init__(f"{function} failed: {message} (code {code})")
        self.function = function
        self.code = code


class FormatError(CallvaultError):
    """A file in one of callvault's formats (Ogg Opus, ...) is malformed."""
