"""Capture the real outputs of the burn-in tools for the unit tests.

Run as root on a test host (never a production machine): it makes a
32 MiB file-backed loop device for fio and removes it again; the network
run stays on loopback.  Writes ``tests/fixtures/burnin/<name>.stdout`` and
``<name>.stderr``, each with a ``#`` source header (see tests/fixtures).

    python3 tests/integration/capture_burnin_outputs.py
    python3 tests/integration/capture_burnin_outputs.py network-partial

(the second: only the network reader's partial connections)
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(os.path.abspath(HERE), "..", "fixtures", "burnin")
MARKER = "# ---- raw output below this line"


def version(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True
                          ).stdout.strip().splitlines()[0]


def save(name: str, argv: list[str], proc: "subprocess.CompletedProcess[str]"
         | tuple[int, str, str]) -> None:
    if isinstance(proc, tuple):
        code, out, err = proc
    else:
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    source = (f"# source: captured {time.strftime('%Y-%m-%d')} by "
              f"tests/integration/capture_burnin_outputs.py on "
              f"{platform.node() or 'the test host'} (Linux "
              f"{platform.release()}, {os.cpu_count()} CPUs): "
              f"{version(['stress-ng', '--version'])}; "
              f"{version(['fio', '--version'])}; "
              f"{version(['smartctl', '--version'])}\n")
    for stream, text in (("stdout", out), ("stderr", err)):
        with open(os.path.join(OUT, f"{name}.{stream}"), "w",
                  encoding="utf-8") as f:
            f.write(source)
            f.write(f"# command: {' '.join(argv)}\n")
            f.write(f"# exit code: {code}\n# stream: {stream}\n")
            f.write(MARKER + "\n")
            f.write(text)
    print(name, code, file=sys.stderr)


def run(name: str, argv: list[str]) -> None:
    save(name, argv, subprocess.run(argv, capture_output=True, text=True,
                                     timeout=120))


def fio_disk(device: str, loops: int = 1) -> list[str]:
    # the agent's argv (hardware/burnin.py), one device
    return ["fio", "--rw", "readwrite", "--bs", "4k", "--direct", "1",
            "--ioengine", "libaio", "--iodepth", "32", "--verify", "crc32c",
            "--verify_dump", "1", "--continue_on_error", "verify",
            "--loops", str(loops), "--runtime", "0", "--time_based",
            "--name", device, "--filename", device]


def fio_net(writer: bool, runtime: int = 2) -> list[str]:
    argv = ["fio", "--ioengine", "net", "--port", "9000", "--fill_device",
            "1", "--group_reporting", "--gtod_reduce", "1", "--numjobs",
            "16"]
    if writer:
        return argv + ["--name", "writer", "--rw", "write", "--runtime",
                       str(runtime), "--time_based", "--listen"]
    return argv + ["--name", "reader", "--rw", "read", "--hostname",
                   "127.0.0.1"]


def jobs(argv: list[str], n: int) -> list[str]:
    argv = list(argv)
    argv[argv.index("--numjobs") + 1] = str(n)
    return argv


def capture_network_partial() -> int:
    """The reader when only some of the writer's ports listen: first 6
    of 16 (a writer of 6 jobs), then 10 of 16 (a writer of 16 jobs, 6 of
    them already served by a reader of 6 jobs, their ports closed)."""
    writer = subprocess.Popen(jobs(fio_net(True), 6), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    run("fio-net-reader-partial", fio_net(False))
    writer.communicate(timeout=60)
    with tempfile.TemporaryDirectory() as tmp:
        writer = subprocess.Popen(jobs(fio_net(True), 6),
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        time.sleep(1)
        report = os.path.join(tmp, "net.json")
        argv = fio_net(False) + ["--output-format", "json", "--output",
                                 report]
        proc = subprocess.run(argv, capture_output=True, text=True,
                              timeout=120)
        with open(report, encoding="utf-8") as f:
            save("fio-net-reader-partial-json-report", argv,
                 (proc.returncode, f.read(), proc.stderr))
        writer.communicate(timeout=60)
    writer = subprocess.Popen(fio_net(True), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    subprocess.run(jobs(fio_net(False), 6), capture_output=True,
                   timeout=60, check=True)
    run("fio-net-reader-rest", fio_net(False))
    out, err = writer.communicate(timeout=60)
    save("fio-net-writer-two-readers", fio_net(True),
         (writer.returncode, out, err))
    return 0


def main() -> int:
    os.makedirs(OUT, exist_ok=True)
    # fio leaves its verify state files (local-*-verify.state) in its
    # working directory: not in the checkout
    with tempfile.TemporaryDirectory() as cwd:
        os.chdir(cwd)
        if sys.argv[1:] == ["network-partial"]:
            return capture_network_partial()
        return capture()


def capture() -> int:
    run("stress-ng-cpu", ["stress-ng", "--cpu", "1", "--timeout", "2",
                          "--metrics-brief"])
    run("stress-ng-vm", ["stress-ng", "--vm", "1", "--timeout", "2",
                         "--vm-bytes", "16M", "--metrics-brief"])
    run("stress-ng-vm-bad-bytes", ["stress-ng", "--vm", "1", "--timeout",
                                   "2", "--vm-bytes", "lots",
                                   "--metrics-brief"])
    with tempfile.TemporaryDirectory() as tmp:
        image = os.path.join(tmp, "disk.img")
        with open(image, "wb") as f:
            f.truncate(32 << 20)
        loop = subprocess.run(["losetup", "-f", "--show", image],
                              capture_output=True, text=True, check=True
                              ).stdout.strip()
        try:
            argv = fio_disk(loop)
            run("fio-disk", argv)
            report = os.path.join(tmp, "fio.json")
            argv = fio_disk(loop)
            argv[-4:-4] = ["--output-format", "json", "--output", report]
            proc = subprocess.run(argv, capture_output=True, text=True,
                                  timeout=120)
            with open(report, encoding="utf-8") as f:
                save("fio-disk-json-report", argv,
                     (proc.returncode, f.read(), proc.stderr))
            # a device without ATA SMART data (IPA: not checked)
            run("smartctl-ja-loop", ["smartctl", "-ja", loop])
        finally:
            subprocess.run(["losetup", "-d", loop], check=True)
        loop = subprocess.run(["losetup", "-r", "-f", "--show", image],
                              capture_output=True, text=True, check=True
                              ).stdout.strip()
        try:
            run("fio-disk-read-only", fio_disk(loop))
        finally:
            subprocess.run(["losetup", "-d", loop], check=True)
    # burnin_gpu on a machine without gpu-burn installed
    run("gpu-burn-missing", ["env", "--chdir=/opt/gpu-burn", "./gpu_burn",
                             "-l"])
    # the reader with no writer listening (IPA retries on exit code 16)
    run("fio-net-reader-refused", fio_net(False))
    writer = subprocess.Popen(fio_net(True), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    run("fio-net-reader", fio_net(False))
    out, err = writer.communicate(timeout=60)
    save("fio-net-writer", fio_net(True), (writer.returncode, out, err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
