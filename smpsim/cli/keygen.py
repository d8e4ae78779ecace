"""``smpsim keygen``: CurveZMQ key pairs for distributed runs beyond loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from smpsim.cli.common import EXIT_USAGE, fail, handle_errors


@handle_errors
def keygen(
    names: Annotated[Optional[list[str]], typer.Argument(
        help="key pairs to make: NAME.key (public) and NAME.key_secret (readable by you only)",
        show_default=False)] = None,
    directory: Annotated[Path, typer.Option("--dir", "-d", help="where to write them")] = Path("keys"),
    cpus: Annotated[Optional[int], typer.Option(
        "--cpus", help="make a coordinator pair and N CPU pairs, laid out as two sets: DIR/coordinator/ "
                       "(its key pair, allowed.keys) and DIR/cpus/ (the coordinator's public key, every "
                       "CPU's pair), one Secret each")] = None,
) -> None:
    """Make CurveZMQ key pairs (Z85, ZeroMQ certificate files) for `smpsim coordinator` and `smpsim cpu`."""
    from smpsim.engines.distributed.security import SecurityError, write_keypair

    if not names and cpus is None:
        fail("name the key pairs to make (e.g. `smpsim keygen coordinator cpu-0`), or give --cpus N", EXIT_USAGE)
    if cpus is not None and not 1 <= cpus <= 1024:
        fail(f"--cpus {cpus}: must be 1..1024 (machine.cpus)", EXIT_USAGE)
    try:
        for name in names or ():
            if not name or "/" in name or name.startswith("."):
                fail(f"key name {name!r}: use a plain file name such as cpu-0", EXIT_USAGE)
            pub, sec, key = write_keypair(directory, name)
            typer.echo(f"{sec}  (public key {key}; {pub.name} is the public half)")
        if cpus is not None:
            cdir, kdir = directory / "coordinator", directory / "cpus"
            for d in (cdir, kdir):
                if d.exists() and any(d.iterdir()):
                    fail(f"{d} exists and is not empty: keygen never overwrites keys (choose another --dir)",
                         EXIT_USAGE)
            kdir.mkdir(parents=True, exist_ok=True)
            pub, _, _ = write_keypair(cdir, "coordinator")
            pub.rename(kdir / pub.name)  # the CPUs' set needs it; in the coordinator's it would be a CPU key
            lines = ["# CPU public keys the coordinator admits (smpsim coordinator --allow): KEY CPU_ID, each",
                     "# key for that CPU id only"]
            for c in range(cpus):
                _, _, key = write_keypair(kdir, f"cpu-{c}")
                lines.append(f"{key} {c}")
            (cdir / "allowed.keys").write_text("\n".join(lines) + "\n")
            typer.echo(f"{cdir}/: coordinator.key_secret, allowed.keys ({cpus} CPU keys)   "
                       "smpsim coordinator --key coordinator.key_secret --allow allowed.keys")
            typer.echo(f"{kdir}/: coordinator.key, cpu-0 .. cpu-{cpus - 1}.key_secret   "
                       "smpsim cpu --key cpu-N.key_secret --coordinator-key coordinator.key")
    except SecurityError as e:
        fail(str(e), EXIT_USAGE)
