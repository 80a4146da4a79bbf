"""callvault: the recording core of a contact centre.

The public surface is re-exported here; compiled modules (``callvault._*``)
are private.
"""

from callvault.errors import CallvaultError, CodecError, FormatError, InputError

__all__ = ["CallvaultError", "CodecError", "FormatError", "InputError", "__version__"]
__version__ = "0.1.0"
