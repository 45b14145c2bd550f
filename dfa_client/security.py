"""What the OPU service and its client share to keep the token secret: the token file, loopback addresses, TLS.

**The token file.** A service started without a token uses the one in a user-only file, and creates that file with
a fresh random token (``secrets``, mode 0600 in a 0700 directory) the first time, as notebook servers do; a client
of a loopback address given no token reads the same file. Its place, :func:`default_token_path`:
``$OPU_SERVICE_TOKEN_FILE`` when set, else ``$XDG_RUNTIME_DIR/opu-driver/service-token`` when that directory exists
(per user, in memory, cleared at logout), else ``~/.local/share/opu-driver/service-token``. A token file that other
users can read or write is refused (the service does not start; see :func:`read_token_file`).

**Loopback.** :func:`is_loopback` says whether a host name or address only ever reaches this machine: a token
crosses anything else only inside TLS (or with an explicit opt-in, ``allow_cleartext``).

**TLS.** :func:`client_tls_context` is the client side of ``tcps://``: the service's certificate is verified
against ``ca_file`` (default: the system's CAs) and its host name.

Numpy-free, standard library only; the service (``opu_driver.service``) imports it for the same rules.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import socket
import ssl
import stat
from pathlib import Path

__all__ = [
    "TOKEN_FILE_ENV",
    "default_token_path",
    "read_token_file",
    "load_or_create_token",
    "is_loopback",
    "client_tls_context",
    "TokenFileError",
]

TOKEN_FILE_ENV = "OPU_SERVICE_TOKEN_FILE"
"""The environment variable that moves the default token file (for the service and its local clients alike)."""
_TOKEN_BYTES = 32  # 256 bits of randomness, as URL-safe text
_MAX_TOKEN_FILE_BYTES = 4096


class TokenFileError(ValueError):
    """A token file that cannot be used: unreadable, empty, too large, or readable or writable by other users."""


def default_token_path() -> Path:
    """Where the service keeps its generated token and where local clients look for it (see the module's
    docstring): ``$OPU_SERVICE_TOKEN_FILE``, else under ``$XDG_RUNTIME_DIR``, else under ``~/.local/share``."""
    override = os.environ.get(TOKEN_FILE_ENV)
    if override:
        return Path(override).expanduser()
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "opu-driver" / "service-token"
    return Path.home() / ".local" / "share" / "opu-driver" / "service-token"


def read_token_file(path: str | os.PathLike[str]) -> str | None:
    """The token in ``path`` (surrounding whitespace removed); None when the file does not exist.

    Raises:
        TokenFileError: the file cannot be read, is not a regular file, is empty or larger than 4 KiB, or (on
            POSIX systems) other users may read or write it: a token they can read is no secret.
    """
    path = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO put in the token file's place must not wait for a writer
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(descriptor, "rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise TokenFileError(f"the token file {path} is not a regular file")
            if os.name == "posix":
                if mode & (stat.S_IRWXG | stat.S_IRWXO):
                    raise TokenFileError(
                        f"the token file {path} is open to other users (mode {stat.filemode(mode)}): "
                        f"run chmod 600 {path}, or remove it to have a new one made"
                    )
            data = file.read(_MAX_TOKEN_FILE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TokenFileError(f"cannot read the token file {path}: {exc.strerror or exc}") from None
    if len(data) > _MAX_TOKEN_FILE_BYTES:
        raise TokenFileError(f"the token file {path} is larger than {_MAX_TOKEN_FILE_BYTES} bytes: not a token")
    try:
        token = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise TokenFileError(f"the token file {path} is not UTF-8 text") from None
    if not token:
        raise TokenFileError(f"the token file {path} is empty")
    return token


def load_or_create_token(path: str | os.PathLike[str]) -> tuple[str, bool]:
    """The token in ``path``, made first if the file does not exist: (token, whether it was created now).

    A new token is ``secrets.token_urlsafe(32)``, written to a temporary file of mode 0600 in the same directory
    (made with mode 0700 if missing) and linked into place, so no other user can ever read it, no process ever
    reads half a token, and of two services starting at once the second reads the first one's token.

    Raises:
        TokenFileError: as :func:`read_token_file`, or the file cannot be created.
    """
    path = Path(path)
    token = read_token_file(path)
    if token is not None:
        return token, False
    token = secrets.token_urlsafe(_TOKEN_BYTES)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(token + "\n")
        try:
            os.link(temporary, path)  # fails if another process made the file meanwhile: its token wins
            created = True
        except FileExistsError:
            created = False
        except OSError:  # a file system without hard links: create the file itself, exclusively
            created = _create_exclusive(path, token)
    except OSError as exc:
        raise TokenFileError(f"cannot create the token file {path}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
    if not created:
        existing = read_token_file(path)
        if existing is None:
            raise TokenFileError(f"the token file {path} vanished while it was being made")
        return existing, False
    return token, True


def _create_exclusive(path: Path, token: str) -> bool:
    """Write ``token`` to a new file ``path`` of mode 0600; False when the file exists already."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(token + "\n")
    return True


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback address ("" and 0.0.0.0 are not)."""
    if host in ("", "0.0.0.0", "::"):
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(_is_loopback_sockaddr(info[4][0]) for info in infos)


def _is_loopback_sockaddr(host: str | int) -> bool:
    """Whether the host part of a getaddrinfo address is a loopback IP (an IPv6 one may end in "%zone")."""
    if not isinstance(host, str):  # only non-IP families give a number here: never loopback
        return False
    return ipaddress.ip_address(host.split("%")[0]).is_loopback


def client_tls_context(ca_file: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """The client's TLS settings for ``tcps://``: TLS 1.2 or later, the service's certificate verified against
    ``ca_file`` (a PEM file of the CA or of the self-signed certificate itself) or, when None, the system's CAs,
    and its host name checked."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=None if ca_file is None else str(ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
