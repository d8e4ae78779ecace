"""Who may join a distributed run: CurveZMQ keys beyond loopback, a run token everywhere.

Key files are ZeroMQ certificates (the format of czmq's zcert and pyzmq's zmq.auth): NAME.key holds a
public key, NAME.key_secret the key pair and is created readable by its owner only. The coordinator has a
key pair and a list of allowed CPU public keys, each bound to one CPU id (a directory of cpu-N.key files,
or a file of `KEY CPU_ID` lines); each CPU has its own key pair and the coordinator's public key. ZeroMQ's
ZAP handler (pyzmq's ThreadAuthenticator) refuses a CPU whose key is not allowed during the handshake,
before any message of ours is read, and names the key as the connection's User-Id; the coordinator refuses
a HELLO for any CPU id but the key's (one leaked key takes one slot at most) and logs each refusal.

Tokens: a run token is a shared secret every CPU presents in its HELLO. Over CurveZMQ it travels encrypted;
on loopback it keeps other local users' processes from taking a CPU's place.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import re
import secrets
from collections import deque
from pathlib import Path

import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

LOOPBACK_NAMES = ("localhost", "ip6-localhost")
_Z85_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#")


class SecurityError(ValueError):
    """A key file or key list that cannot be used; the message names the file (and line) and the fix."""


def is_loopback(address: str) -> bool:
    """An ipc:// address, or a tcp:// one whose host is a loopback address or name."""
    if address.startswith(("ipc://", "inproc://")):
        return True
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---- tokens -------------------------------------------------------------------------------------------

def new_token() -> str:
    return secrets.token_hex(16)


def same_token(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def write_private(path: Path, text: str) -> None:
    """Create path readable and writable by its owner only (0600 from the start, never wider)."""
    path = Path(path)
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def read_token_file(path: Path) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as e:
        raise SecurityError(f"--token-file {path}: cannot read it ({e.strerror})") from None
    if not token:
        raise SecurityError(f"--token-file {path} is empty")
    return token


# ---- keys ---------------------------------------------------------------------------------------------

def _check_z85(key: bytes, where: str) -> bytes:
    if len(key) != 40 or not set(key.decode("ascii", "replace")) <= _Z85_CHARS:
        raise SecurityError(f"{where}: not a CurveZMQ key (40 Z85 characters, as `smpsim keygen` writes)")
    return key


def load_keypair(path: Path, option: str = "--key") -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys of a NAME.key_secret file."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise SecurityError(f"{option} {path}: cannot read a key pair from it ({e}); make one with "
                        "`smpsim keygen`") from None
    if secret is None:
        raise SecurityError(f"{option} {path} holds only a public key: give the NAME.key_secret file")
    return _check_z85(public, f"{option} {path}"), _check_z85(secret, f"{option} {path}")


def load_public_key(path: Path, option: str) -> bytes:
    """The public key of a NAME.key (or NAME.key_secret) file."""
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise SecurityError(f"{option} {path}: cannot read a public key from it ({e}); make one with "
                        "`smpsim keygen`") from None
    return _check_z85(public, f"{option} {path}")


_CPU_NAME = re.compile(r"cpu-(\d+)")  # keygen's name for CPU N's key pair


def _cpu_of_name(*names: str) -> int | None:
    """The CPU id in the first name that is exactly ``cpu-N`` (a certificate's metadata name, its file name)."""
    for name in names:
        m = _CPU_NAME.fullmatch(name)
        if m:
            return int(m.group(1))
    return None


def _certificate_cpu(path: Path, exclude: bytes | None) -> tuple[bytes, int] | None:
    """(public key, CPU id) of a NAME.key certificate; None for the excluded key (the coordinator's own)."""
    key = load_public_key(path, "--allow")
    if key == exclude:
        return None
    meta = re.search(r'^\s*name\s*=\s*"([^"]*)"', path.read_text(errors="replace"), re.M)
    cpu = _cpu_of_name(meta.group(1) if meta else "", path.name.split(".")[0])
    if cpu is None:
        raise SecurityError(f"--allow {path}: cannot tell which CPU id this key is for (a key is admitted "
                            "for one CPU id only): name the file cpu-N.key, as `smpsim keygen` does, or list "
                            "the keys in a file of `KEY CPU_ID` lines")
    return key, cpu


def _bind(allowed: dict[bytes, int], key: bytes, cpu: int, where: str) -> None:
    if allowed.get(key, cpu) != cpu:
        raise SecurityError(f"{where}: key {key.decode()} is listed for CPU {allowed[key]} and CPU {cpu}: a "
                            "key is admitted for one CPU id only")
    allowed[key] = cpu


def load_allowed(path: Path, exclude: bytes | None = None) -> dict[bytes, int]:
    """Allowed CPU public keys, each bound to the one CPU id it may join as: every cpu-N.key certificate in
    a directory, or a file of `KEY CPU_ID` lines (anything after them, and lines starting with a '#' word,
    are comments), or one certificate file. A line `KEY  # cpu-N`, as keygen wrote allowed.keys before keys
    were bound, is read as KEY for CPU N. ``exclude``: a key to leave out (the coordinator's own)."""
    path = Path(path)
    allowed: dict[bytes, int] = {}
    if path.is_dir():
        for f in sorted(path.glob("*.key")):
            got = _certificate_cpu(f, exclude)
            if got is not None:
                _bind(allowed, *got, f"--allow {f}")
    else:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise SecurityError(f"--allow {path}: cannot read it ({e})") from None
        if "public-key" in text:
            got = _certificate_cpu(path, exclude)
            if got is not None:
                _bind(allowed, *got, f"--allow {path}")
        else:
            for n, line in enumerate(text.splitlines(), 1):
                words = line.split()
                # A key is the line's first word (Z85 has '#' in its alphabet: a key may start with it)
                if not words or (words[0].startswith("#") and len(words[0]) != 40):
                    continue
                where = f"--allow {path}, line {n}"
                key = _check_z85(words[0].encode(), where)
                if key == exclude:
                    continue
                rest = words[1:]
                if rest and rest[0].isdigit():
                    cpu: int | None = int(rest[0])
                elif rest[:1] == ["#"] and len(rest) > 1:  # keygen's old line: `KEY  # cpu-N`
                    cpu = _cpu_of_name(rest[1])
                else:
                    cpu = None
                if cpu is None:
                    raise SecurityError(f"{where}: key {key.decode()} has no CPU id: a key is admitted for one "
                                        "CPU id only; write it after the key (`KEY CPU_ID`), as `smpsim keygen "
                                        "--cpus N` writes allowed.keys")
                _bind(allowed, key, cpu, where)
    if not allowed:
        raise SecurityError(f"--allow {path}: no public keys in it (a directory of cpu-N.key files, or a file "
                        "of `KEY CPU_ID` lines)")
    return allowed


def write_keypair(directory: Path, name: str) -> tuple[Path, Path, str]:
    """Create directory/name.key (public) and directory/name.key_secret (0600); never overwrites.
    Returns both paths and the public key."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.curve_keypair()
    pub_path, sec_path = directory / f"{name}.key", directory / f"{name}.key_secret"
    for p in (pub_path, sec_path):
        if p.exists():
            raise SecurityError(f"{p} exists already: keygen never overwrites a key (remove it first)")
    body = f"metadata\n    name = \"{name}\"\ncurve\n    public-key = \"{public.decode()}\"\n"
    header = "#   ZeroMQ CURVE {} Certificate (smpsim keygen)\n\n"
    fd = os.open(sec_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(header.format("**Secret**") + body + f"    secret-key = \"{secret.decode()}\"\n")
    fd = os.open(pub_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(header.format("Public") + body)
    return pub_path, sec_path, public.decode()


# ---- sockets ------------------------------------------------------------------------------------------

class CurveClient:
    """A CPU's side: its key pair and the coordinator's public key."""

    def __init__(self, key_file: Path, coordinator_key_file: Path):
        self.public, self.secret = load_keypair(key_file)
        self.server = load_public_key(coordinator_key_file, "--coordinator-key")

    def apply(self, sock: zmq.Socket) -> None:
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_serverkey = self.server


class CurveServer:
    """The coordinator's side: its key pair, the allowed CPU keys, and the ZAP handler that checks them.

    Refusals happen on the ZAP thread; they are queued here and logged by the coordinator's own loop
    (``refusals()``), so that one thread writes the log. Handshakes that fail before ZAP is asked (a
    plain-TCP client, a client holding the wrong coordinator key) are seen on a socket monitor.
    """

    def __init__(self, key_file: Path, allow: Path):
        self.public, self.secret = load_keypair(key_file)
        self.allowed = load_allowed(allow, exclude=self.public)  # public key (Z85) -> its one CPU id
        self.auth = None
        self.sock = self.monitor = None
        self._refused: deque = deque(maxlen=1000)  # bounded: a flood of bad handshakes cannot grow it

    def apply(self, sock: zmq.Socket) -> None:
        sock.curve_server = True
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public

    def start(self, ctx: zmq.Context) -> None:
        from zmq.auth.thread import ThreadAuthenticator
        self.auth = ThreadAuthenticator(ctx)
        self.auth.start()
        self.auth.configure_curve_callback("*", credentials_provider=self)

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP: is this client key allowed? (called on the authenticator's thread)"""
        if key in self.allowed:
            return True
        self._refused.append(key.decode("ascii", "replace"))
        return False

    def watch(self, sock: zmq.Socket) -> None:
        self.sock = sock
        self.monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                               | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)

    def refusals(self) -> list[str]:
        """Reasons for the handshakes refused since the last call."""
        out = []
        while self._refused:
            out.append(f"CurveZMQ key {self._refused.popleft()} is not in the --allow list")
        while self.monitor is not None and self.monitor.poll(0):
            recv_monitor_message(self.monitor)
            out.append("CurveZMQ handshake failed: a client without CurveZMQ, or holding another "
                       "coordinator's public key")
        return out

    def stop(self) -> None:
        if self.monitor is not None:
            self.sock.disable_monitor()
            self.monitor.close(linger=0)
            self.monitor = None
        if self.auth is not None:
            self.auth.stop()
            self.auth = None


# ---- what each side uses, from its options --------------------------------------------------------------

_KEYGEN_HINT = "make keys with `smpsim keygen --cpus N --dir keys` (README, \"Security\")"


def _curve_available() -> None:
    if not zmq.has("curve"):
        raise SecurityError("this ZeroMQ library was built without CurveZMQ: keys cannot be used")


def coordinator_side(listen: str, token: str | None, key: Path | None, allow: Path | None,
                     insecure: bool) -> tuple[str, CurveServer | None, bool]:
    """(run token, CurveServer or None, whether the token was made here) for `smpsim coordinator`.

    Beyond loopback: CurveZMQ (--key and --allow), or plain TCP with --insecure and a run token. On
    loopback without keys: the given run token, else one of its own (made=True), so that no other local
    process can take a CPU's place."""
    if (key is None) != (allow is None):
        raise SecurityError("--key and --allow go together: the coordinator's key pair and the CPUs' public "
                            f"keys; {_KEYGEN_HINT}")
    curve = None
    if key is not None:
        _curve_available()
        curve = CurveServer(key, allow)
    elif not is_loopback(listen):
        if not insecure:
            raise SecurityError(f"--listen {listen} is beyond loopback: plain TCP is refused there; give the "
                                f"coordinator a key pair and the CPUs' public keys (--key, --allow): "
                                f"{_KEYGEN_HINT}; or accept an unencrypted wire with --insecure and a run token")
        if not token:
            raise SecurityError(f"--listen {listen} --insecure: give a run token (--token or SMPSIM_TOKEN) "
                                "that every CPU must present")
    if token or curve is not None:
        return token or "", curve, False
    return new_token(), None, True


def cpu_side(address: str, token: str | None, token_file: Path | None, key: Path | None,
             coordinator_key: Path | None, insecure: bool) -> tuple[str, CurveClient | None]:
    """(run token, CurveClient or None) for `smpsim cpu`."""
    if token_file is not None:
        if token:
            raise SecurityError("give the run token once: --token (or SMPSIM_TOKEN) or --token-file")
        token = read_token_file(token_file)
    if (key is None) != (coordinator_key is None):
        raise SecurityError("--key and --coordinator-key go together: this CPU's key pair and the "
                            f"coordinator's public key; {_KEYGEN_HINT}")
    if key is not None:
        _curve_available()
        return token or "", CurveClient(key, coordinator_key)
    if not is_loopback(address) and not insecure:
        raise SecurityError(f"--coordinator {address} is beyond loopback: plain TCP is refused there; give "
                            "this CPU its key pair and the coordinator's public key (--key, "
                            f"--coordinator-key): {_KEYGEN_HINT}; or --insecure")
    return token or "", None
