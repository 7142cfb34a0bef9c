"""Docker for `sam local`, set up on a fresh Debian or Ubuntu machine without a container registry.

    python3 scripts/sam_local_docker.py         # sets everything up, prints the image to pass to
                                                # `sam local ... --invoke-image IMAGE --skip-pull-image`
    python3 scripts/sam_local_docker.py --stop  # stops the dockerd this script started

What it does, each step only if it is not done already:

1. installs Debian's `docker.io`, `qemu-user-static` and `binfmt-support` with apt-get (as root);
2. starts `dockerd` in the background, logging to .tools/sam-local/dockerd.log, without its
   userland proxy (see start_daemon);
3. lets arm64 binaries run here: mounts binfmt_misc and enables qemu-aarch64. The functions are
   built for Graviton (template.yaml's `Architectures: [arm64]`), and running the very binaries
   `sam build` made is the point of the exercise, so they run under emulation rather than being
   rebuilt for this machine;
4. builds the base image of the Lambda containers offline. SAM would pull
   public.ecr.aws/lambda/provided:al2023-arm64, which needs a registry. What SAM needs of the
   image is little: a shell, `mv` and `chmod` (it adds its Runtime Interface Emulator, which
   ships inside the SAM CLI package, with a `RUN mv ... && chmod ...`), and the C library the
   `bootstrap` binaries link against. So the image is glibc, libgcc and a static busybox, from
   Debian's arm64 packages, fetched with apt into a private folder (the machine's own package
   lists and architectures are left alone), and this machine's CA bundle (for a function run
   against AWS itself), made into an image marked linux/arm64 (a `docker build` of
   `FROM scratch` and the unpacked packages: `docker import` would mark it as this machine's
   architecture, and SAM builds on it for linux/arm64). About 25 MB.

Docker that cannot start here (no root to install or start it, no apt-get, a daemon that
exits at once, as in some unprivileged containers) raises DockerUnavailable with the reason; the
caller decides whether that is a skip. Only the standard library is used, so it runs before any
virtual environment exists.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STATE_DIR = Path(os.environ.get("AGENTIDP_TOOLS_DIR", REPO / ".tools")) / "sam-local"
# The base image. The tag changes when its contents would: a new package set is a new image.
IMAGE = "agentidp-lambda-base:arm64-glibc-busybox-3"
# Debian's names; libgcc-s1 holds the unwinder that Rust's standard library links against.
BASE_PACKAGES = ("libc6", "libgcc-s1", "busybox-static")
BUSYBOX_LINKS = ("sh", "mv", "chmod", "ls", "cat")
HOST_PACKAGES = {"dockerd": "docker.io", "qemu-aarch64-static": "qemu-user-static", "update-binfmts": "binfmt-support"}
BINFMT = Path("/proc/sys/fs/binfmt_misc")


class DockerUnavailable(Exception):
    """Docker cannot run on this machine; the message says why."""


@dataclass
class Setup:
    image: str | None
    started_daemon: bool
    # Seconds per step, for the run's summary.
    timings: dict[str, float] = field(default_factory=dict)


def log(message: str) -> None:
    print(f"sam-local-docker: {message}", file=sys.stderr, flush=True)


def run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=True, **kwargs)


def quiet(*args: str) -> bool:
    """Whether the command succeeds; its output is dropped."""
    return subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


def is_root() -> bool:
    return os.geteuid() == 0


def apt_get(*args: str) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run("apt-get", *args, env=env, stdout=subprocess.DEVNULL)


def ensure_host_packages() -> None:
    missing = [package for command, package in HOST_PACKAGES.items() if shutil.which(command) is None]
    if not missing:
        return
    if not shutil.which("apt-get"):
        raise DockerUnavailable(f"{', '.join(missing)} missing and no apt-get to install them")
    if not is_root():
        raise DockerUnavailable(f"{', '.join(missing)} missing; installing them needs root")
    log(f"installing {' '.join(missing)} with apt-get")
    apt_get("update", "-qq")
    apt_get("install", "-y", "-qq", "--no-install-recommends", *missing)


def daemon_answers() -> bool:
    return quiet("docker", "info")


def docker_client() -> str:
    """The docker command line. Debian's docker.io brings one; a machine may have another first
    on PATH, which talks to the daemon just as well (the API version is negotiated)."""
    found = shutil.which("docker")
    if not found:
        raise DockerUnavailable("no docker command line")
    return found


def start_daemon() -> bool:
    """Starts dockerd unless one answers. True when this call started it."""
    docker_client()
    if daemon_answers():
        return False
    if not is_root():
        raise DockerUnavailable("no Docker daemon answers, and starting one needs root")
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    log_path = STATE_DIR / "dockerd.log"
    log(f"starting dockerd (log: {log_path})")
    with log_path.open("ab") as out:
        # Its own session: it outlives a Ctrl-C of the caller's process group until stop_daemon.
        process = subprocess.Popen(
            # No userland proxy: iptables forwards the containers' published ports. The proxy
            # accepts a connection before the container listens, so SAM's wait for the Lambda
            # runtime emulator (slow to start under emulation) would end at once, and its first
            # invocation would find nothing there.
            ["dockerd", "--userland-proxy=false", "--pidfile", str(STATE_DIR / "dockerd.pid")],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if daemon_answers():
            (STATE_DIR / "dockerd.started-by-us").write_text(str(process.pid))
            return True
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            raise DockerUnavailable("dockerd exited at once:\n    " + "\n    ".join(tail))
        time.sleep(0.5)
    process.terminate()
    raise DockerUnavailable(f"dockerd did not answer within 60 s (log: {log_path})")


def stop_daemon() -> None:
    """Stops the dockerd that start_daemon started, and only that one."""
    marker = STATE_DIR / "dockerd.started-by-us"
    if not marker.exists():
        return
    pid = int(marker.read_text())
    marker.unlink()
    try:
        os.kill(pid, 15)
    except ProcessLookupError:
        return
    # dockerd stops its containers first; it may take a few seconds.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        # Reaps it when it is our child (it is when this process started it).
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.2)
    log(f"dockerd (pid {pid}) did not stop within 30 s; killing it")
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


def ensure_arm64_emulation() -> None:
    entry = BINFMT / "qemu-aarch64"
    if entry.exists() and entry.read_text().startswith("enabled"):
        return
    if not is_root():
        raise DockerUnavailable("arm64 emulation is not enabled, and enabling it needs root")
    if not (BINFMT / "register").exists():
        run("mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT))
    run("update-binfmts", "--enable", "qemu-aarch64")
    if not (entry.exists() and entry.read_text().startswith("enabled")):
        raise DockerUnavailable("update-binfmts did not enable qemu-aarch64")


def image_exists(image: str) -> bool:
    return quiet(docker_client(), "image", "inspect", image)


def build_base_image(image: str) -> None:
    """glibc, libgcc and busybox for arm64, from Debian's packages, as one layer."""
    with tempfile.TemporaryDirectory(prefix="agentidp-base-image.") as tmp:
        work = Path(tmp)
        # A private apt state: arm64 package lists, read from the machine's own sources, without
        # adding the architecture to the machine's dpkg.
        (work / "lists" / "partial").mkdir(parents=True)
        (work / "cache" / "archives" / "partial").mkdir(parents=True)
        options = [
            "-o", "APT::Architecture=arm64",
            "-o", "APT::Architectures::=arm64",
            "-o", f"Dir::State::Lists={work / 'lists'}",
            "-o", f"Dir::Cache={work / 'cache'}",
            "-o", "Dir::State::status=/dev/null",
            "-o", "Debug::NoLocking=1",
            # The private folders belong to root; apt's _apt user could not write them.
            "-o", "APT::Sandbox::User=root",
        ]
        log(f"downloading {' '.join(BASE_PACKAGES)} (arm64) with apt")
        apt_get(*options, "update", "-qq")
        downloads = work / "debs"
        downloads.mkdir()
        subprocess.run(
            ["apt-get", *options, "download", "-qq", *BASE_PACKAGES],
            cwd=downloads,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        root = work / "root"
        root.mkdir()
        for deb in sorted(downloads.glob("*.deb")):
            run("dpkg-deb", "-x", str(deb), str(root))
        busybox = root / "bin" / "busybox"
        if not busybox.exists():
            raise RuntimeError(f"busybox-static did not unpack to {busybox}")
        for name in BUSYBOX_LINKS:
            link = root / "bin" / name
            if not link.exists():
                link.symlink_to("busybox")
        (root / "tmp").mkdir(exist_ok=True)
        (root / "tmp").chmod(0o1777)
        # This machine's CA bundle, where Amazon Linux keeps its own, so that a function run
        # against AWS itself can verify its endpoints' certificates.
        bundle = Path("/etc/ssl/certs/ca-certificates.crt")
        if bundle.exists():
            (root / "etc" / "pki" / "tls" / "certs").mkdir(parents=True)
            shutil.copy(bundle, root / "etc" / "pki" / "tls" / "certs" / "ca-bundle.crt")
        # As Amazon Linux's /etc/host.conf: glibc answers with every address /etc/hosts has for
        # a name, not the first only, so that sam_local.py's `--add-host localhost:<gateway>`
        # adds the host behind the container's own 127.0.0.1 instead of being shadowed by it.
        (root / "etc" / "host.conf").write_text("multi on\n")
        context = work / "context"
        context.mkdir()
        run("tar", "-C", str(root), "-cf", str(context / "root.tar"), ".")
        (context / "Dockerfile").write_text("FROM scratch\nADD root.tar /\n")
        log(f"docker build -> {image}")
        run(docker_client(), "build", "--quiet", "--platform", "linux/arm64", "--tag", image, str(context),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # SAM layers its emulator on the image as `<repository>:rapid-arm64`, one per repository, and
    # reuses it while it exists: one made from an older tag would hide this one (--force: an
    # exited container of the old one would keep it).
    quiet(docker_client(), "image", "rm", "--force", f"{image.rsplit(':', 1)[0]}:rapid-arm64")


def check_image_runs(image: str) -> None:
    """An arm64 container starts and runs a command: emulation and the image work together."""
    result = subprocess.run(
        [docker_client(), "run", "--rm", "--network", "none", image, "/bin/sh", "-c", "echo ok"],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0 or result.stdout.strip() != "ok":
        raise RuntimeError(f"{image} does not run a shell under emulation: {result.stderr.strip()}")


def setup(image: str | None = IMAGE) -> Setup:
    """Docker, emulation, and the base image unless `image` is None (SAM is to pull AWS's)."""
    timings: dict[str, float] = {}
    started = time.monotonic()
    ensure_host_packages()
    ensure_arm64_emulation()
    started_daemon = start_daemon()
    timings["docker set-up"] = time.monotonic() - started
    if image:
        started = time.monotonic()
        if not image_exists(image):
            build_base_image(image)
        check_image_runs(image)
        timings["base image"] = time.monotonic() - started
    return Setup(image=image, started_daemon=started_daemon, timings=timings)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stop", action="store_true", help="stop the dockerd this script started")
    parser.add_argument("--image", default=IMAGE, help=f"name:tag of the base image (default {IMAGE})")
    args = parser.parse_args()
    if args.stop:
        stop_daemon()
        return 0
    try:
        done = setup(args.image)
    except DockerUnavailable as e:
        log(f"Docker cannot run here: {e}")
        return 1
    for step, seconds in done.timings.items():
        log(f"{step}: {seconds:.0f} s")
    print(done.image)
    return 0


if __name__ == "__main__":
    sys.exit(main())
