"""Every failure a user can meet, each with its own documented exit code.

The CLI prints ``str(error)`` as one line and exits with ``error.exit_code``;
the codes are listed in README.md and must never be renumbered.  Messages never
contain secrets.
"""


class E2efsError(Exception):
    exit_code = 1


class UsageError(E2efsError):
    exit_code = 2


class VaultNotFound(E2efsError):
    exit_code = 10


class VaultCorrupt(E2efsError):
    """The vault file is unreadable, not a vault, or fails its MAC."""
    exit_code = 11


class VaultTooNew(E2efsError):
    exit_code = 12


class WrongSecret(E2efsError):
    exit_code = 13


class BadKeyFormat(E2efsError):
    exit_code = 14


class WeakPassword(E2efsError):
    exit_code = 15


class CorruptData(E2efsError):
    """Ciphertext (a block, a header, a name) failed authentication."""
    exit_code = 16


class DestinationNotEmpty(E2efsError):
    exit_code = 17


class IOFailure(E2efsError):
    """Reading the source or writing the destination failed (not corruption)."""
    exit_code = 18


class MountpointError(E2efsError):
    exit_code = 19


class FuseUnavailable(E2efsError):
    exit_code = 20


class NoSpace(E2efsError):
    exit_code = 21


class NotFoundInVault(E2efsError):
    exit_code = 22


class SecretInputError(E2efsError):
    exit_code = 23


class MountFailed(E2efsError):
    exit_code = 24


class LastKeySlot(E2efsError):
    """Refused: removing the vault's last password or key file."""
    exit_code = 25


class VaultMounted(E2efsError):
    """Refused: the vault is mounted on this machine (unmount it first)."""
    exit_code = 26


class RekeyInProgress(E2efsError):
    """Refused: an interrupted ``e2efs rekey`` must be finished first."""
    exit_code = 27


class NotConfirmed(E2efsError):
    """Refused: a destructive command was not confirmed."""
    exit_code = 28


class VerificationFailed(E2efsError):
    """A copy did not match its source when read back; nothing was removed."""
    exit_code = 29


class OutOfMemory(E2efsError):
    """The password's key derivation could not get the memory (or threads) it is set to use."""
    exit_code = 30


EXIT_CODES = {
    "OK": 0,
    "GENERIC": E2efsError.exit_code,
    **{cls.__name__: cls.exit_code for cls in E2efsError.__subclasses__()},
}

CLOSED_PIPE_EXIT = 141      # 128 + SIGPIPE: the reader of the output went away (`| head`)
