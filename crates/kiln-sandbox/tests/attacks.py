# Runs inside the sandbox as the step user. Prints "<check>: PASS|FAIL <detail>".
import ctypes, errno, os, socket, subprocess, time

def report(name, ok, detail=""):
    print(f"{name}: {'PASS' if ok else 'FAIL'} {detail}", flush=True)

def must_fail(name, fn):
    try:
        r = fn()
        report(name, False, f"succeeded: {r!r}")
    except Exception as e:
        report(name, True, repr(e))

def sh_fails(name, cmd):
    p = subprocess.run(["/bin/sh", "-c", cmd], capture_output=True, text=True)
    report(name, p.returncode != 0, f"rc={p.returncode} {p.stdout.strip()[:80]} {p.stderr.strip()[:120]}")

must_fail("read_shadow", lambda: open("/etc/shadow").read())
must_fail("list_root", lambda: os.listdir("/root"))
must_fail("list_home", lambda: os.listdir("/home/x") if os.path.exists("/home") else (_ for _ in ()).throw(FileNotFoundError("no /home")))
for p in ["/usr/kiln-x", "/etc/kiln-x", "/kiln-x", "/usr/bin/kiln-x"]:
    must_fail("write " + p, lambda p=p: open(p, "w").write("x"))
report("write_workspace", open("/workspace/ok", "w").write("ok") == 2)
pids = [d for d in os.listdir("/proc") if d.isdigit()]
report("few_pids", len(pids) <= 6, str(pids))
report("no_host_procs", not any(open(f"/proc/{p}/cmdline", "rb").read().startswith(b"cargo") for p in pids if os.path.exists(f"/proc/{p}/cmdline")))
sh_fails("mount_tmpfs", "mkdir -p /tmp/m && mount -t tmpfs none /tmp/m")
sh_fails("mount_bind", "mkdir -p /tmp/n && mount --bind /workspace /tmp/n")
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.ptrace.restype = ctypes.c_long
child = subprocess.Popen(["/bin/sleep", "30"])
r = libc.ptrace(16, child.pid, None, None)  # PTRACE_ATTACH to a child of ours
report("ptrace_attach_child", r == -1, f"r={r} errno={ctypes.get_errno()}")
r = libc.ptrace(16, 1, None, None)
report("ptrace_attach_pid1", r == -1, f"r={r} errno={ctypes.get_errno()}")
child.kill()
must_fail("raw_socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
must_fail("packet_socket", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0))
for addr in [("10.0.0.1", 80), ("8.8.8.8", 53), ("1.1.1.1", 443)]:
    def conn(addr=addr):
        s = socket.socket()
        s.settimeout(3)
        t = time.monotonic()
        try:
            s.connect(addr)
        finally:
            report(f"fast_fail {addr[0]}", time.monotonic() - t < 2.5)
    must_fail(f"connect {addr[0]}", conn)
ifaces = sorted(os.listdir("/sys/class/net")) if os.path.exists("/sys/class/net") else []
report("only_lo", all(i == "lo" for i in ifaces), str(ifaces))
def fill_tmp():
    with open("/tmp/big", "wb") as f:
        for _ in range(64):
            f.write(b"\0" * (1 << 20))
            f.flush()
            os.fsync(f.fileno())
try:
    fill_tmp()
    report("tmp_enospc", False, "wrote 64 MiB to /tmp")
except OSError as e:
    report("tmp_enospc", e.errno == errno.ENOSPC, repr(e))
os.unlink("/tmp/big")
sh_fails("chroot", "chroot / true")
sh_fails("setuid_root", "python3 -c 'import os; os.setuid(0)'")
report("no_caps", "CapEff:\t0000000000000000" in open("/proc/self/status").read())
st = open("/proc/self/status").read()
# gVisor's /proc/self/status has no NoNewPrivs line.
report("no_new_privs", "NoNewPrivs:\t1" in st or "NoNewPrivs" not in st)
print("attacks-done")
