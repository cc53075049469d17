# What a step pays per operation inside a sandbox: `kiln bench --profile`
# runs this as a step on each tier and compares the tiers' medians.
# Prints `PROBE <name> <microseconds>` lines.
import mmap
import os
import shutil
import subprocess
import time


def per_call(f, n):
    start = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - start) / n * 1e6


def median_call(f, n):
    xs = []
    for _ in range(n):
        start = time.perf_counter()
        f()
        xs.append(time.perf_counter() - start)
    xs.sort()
    return xs[len(xs) // 2] * 1e6


def fork():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def spawn(argv):
    def go():
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return go


def fault_mib():
    size = 64 << 20
    m = mmap.mmap(-1, size)
    for i in range(0, size, 4096):
        m[i] = 1
    m.close()


def open_close():
    os.close(os.open("/etc/ld.so.cache", os.O_RDONLY))


def stat():
    os.stat("/usr/bin/python3")


rows = [
    ("system call (getppid)", lambda: per_call(os.getppid, 20000)),
    ("stat of a file in /usr", lambda: per_call(stat, 5000)),
    ("open + close", lambda: per_call(open_close, 5000)),
    ("fork + wait", lambda: median_call(fork, 40)),
    ("spawn /bin/true", lambda: median_call(spawn(["/bin/true"]), 40)),
    ("page faults, per MiB touched", lambda: median_call(fault_mib, 5) / 64),
]
node = shutil.which("node")
if node:
    rows.append(("node -e 0", lambda: median_call(spawn([node, "-e", "0"]), 15)))
npm = shutil.which("npm")
if npm:
    rows.append(("npm --version", lambda: median_call(spawn([npm, "--version"]), 5)))
for name, measure in rows:
    print(f"PROBE {name}|{measure():.1f}", flush=True)
