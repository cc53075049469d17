//! Attacks from inside a step that must fail on both tiers. Each job tries
//! one thing and exits 0 only when the attack was stopped; the host side is
//! checked too wherever the attack would leave a trace there.

mod common;

use std::net::TcpListener;

use common::Project;

/// A job per attack; `{port}` / `{hostip}` are filled in.
const ATTACKS: &str = r#"
jobs:
  read-host-secrets:
    steps:
      - run: |
          for f in /etc/shadow /root/.bashrc /root/.ssh /var/lib /work /proc/1/root/etc/shadow; do
            if cat "$f" >/dev/null 2>&1 || ls "$f" >/dev/null 2>&1; then echo "BROKEN: $f is visible"; exit 1; fi
          done
          # /home holds the job's own home only, never the host's homes.
          if [ "$(ls -A /home)" != runner ]; then echo "BROKEN: /home shows $(ls -A /home)"; exit 1; fi
          echo held
  write-outside-workspace:
    steps:
      - run: |
          for f in /usr/kiln-pwned /etc/kiln-pwned /kiln-pwned /kiln/step/kiln-pwned /proc/sys/kernel/hostname; do
            if echo pwned > "$f" 2>/dev/null; then echo "BROKEN: wrote $f"; exit 1; fi
          done
          echo ok > /workspace/allowed && echo held
  see-host-processes:
    steps:
      - run: |
          n=$(ls /proc | grep -cE '^[0-9]+$')
          if [ "$n" -gt 10 ]; then echo "BROKEN: $n processes visible"; exit 1; fi
          # The host's processes (the test runner, kiln, the runtime) must be invisible.
          if grep -qsa -e cargo -e ci.yml -e runsc -e containerd -e attacks- /proc/[0-9]*/cmdline; then echo "BROKEN: host process visible"; exit 1; fi
          echo held
  mount:
    steps:
      - run: |
          mkdir -p /tmp/m
          if mount -t tmpfs none /tmp/m 2>/dev/null; then echo "BROKEN: mounted"; exit 1; fi
          if mount --bind /workspace /tmp/m 2>/dev/null; then echo "BROKEN: bind mounted"; exit 1; fi
          echo held
  ptrace:
    steps:
      - shell: python
        run: |
          import ctypes, os, subprocess, sys
          libc = ctypes.CDLL(None, use_errno=True)
          victim = subprocess.Popen(["sleep", "30"], start_new_session=True)
          # PTRACE_ATTACH = 16: attaching to another process must fail.
          for pid in (victim.pid, 1):
              if pid == os.getpid():
                  continue
              if libc.ptrace(16, pid, None, None) == 0:
                  print(f"BROKEN: attached to {pid}")
                  sys.exit(1)
          victim.kill()
          print("held")
  raw-socket:
    steps:
      - shell: python
        run: |
          import socket, sys
          for kind in (socket.SOCK_RAW,):
              try:
                  socket.socket(socket.AF_INET, kind, socket.IPPROTO_ICMP)
                  print("BROKEN: raw socket"); sys.exit(1)
              except OSError:
                  pass
          try:
              socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
              print("BROKEN: packet socket"); sys.exit(1)
          except OSError:
              pass
          print("held")
  reach-off-loopback:
    steps:
      - shell: python
        run: |
          import socket, sys
          # A server listens on the host's loopback and (if it has one) the
          # host's own address: the sandbox's loopback is its own, and there
          # is no route anywhere else.
          targets = [("127.0.0.1", {port})]
          if "{hostip}":
              targets.append(("{hostip}", {port}))
          for host, port in targets:
              s = socket.socket()
              s.settimeout(3)
              try:
                  s.connect((host, port))
                  print(f"BROKEN: reached {host}:{port}"); sys.exit(1)
              except OSError as e:
                  print(f"{host}: {e.__class__.__name__}")
          ifaces = [l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:]]
          if [i for i in ifaces if i != "lo"]:
              print(f"BROKEN: interfaces {ifaces}"); sys.exit(1)
          print("held")
  fork-bomb:
    kiln: { pids: 128 }
    timeout-minutes: 0.25
    steps:
      - run: |
          bomb() { bomb | bomb & }
          bomb
          sleep 60
  after-bomb:
    needs: fork-bomb
    if: always()
    steps:
      - run: echo engine still fine
  background-survivor:
    steps:
      - run: |
          setsid sleep 613 > /dev/null 2>&1 < /dev/null &
          ( sleep 614 > /dev/null 2>&1 & ) &
          nohup sleep 615 > /dev/null 2>&1 &
          echo started
      # Within a phase a background process lives on (a job is one
      # machine); a phase boundary ends it, however it detached.
      - run: pgrep -f 'sleep 61[345]' > /dev/null && echo "alive within its phase"
      - kiln: { phase: deploy }
        run: |
          if pgrep -f 'sleep 61[345]' ; then echo "BROKEN: survivor crossed the phase boundary"; exit 1; fi
          echo held
  step-file-symlink:
    outputs:
      leaked: ${{ steps.evil.outputs.root }}
    steps:
      - id: evil
        run: |
          ln -sf /etc/shadow "$GITHUB_OUTPUT" 2>/dev/null || true
          rm -f "$GITHUB_ENV"; ln -s /etc/passwd "$GITHUB_ENV"
          echo held
  terminal-escapes:
    steps:
      - run: |
          printf '\033]0;pwned-title\007\033[2J\033[Hvisible\033[31m red\033[0m\n'
          printf 'clear\033c after reset\n'
"#;

per_tier!(attacks_fail, |tier| {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let host_ip = host_ip();
    let _host_listener = host_ip.as_ref().and_then(|ip| TcpListener::bind((ip.as_str(), port)).ok());
    let wf =
        ATTACKS.replace("{port}", &port.to_string()).replace("{hostip}", host_ip.as_deref().unwrap_or(""));
    let p = Project::new(&wf);
    let run = p.run(tier, &["--max-parallel", "2"]);
    for job in [
        "read-host-secrets",
        "write-outside-workspace",
        "see-host-processes",
        "mount",
        "ptrace",
        "raw-socket",
        "reach-off-loopback",
        "background-survivor",
        "step-file-symlink",
        "terminal-escapes",
        "after-bomb",
    ] {
        assert_eq!(
            run.status(job),
            "succeeded",
            "{job} (an attack got through?)\n{}",
            run.lines(job).join("\n")
        );
        assert!(!run.lines(job).iter().any(|l| l.contains("BROKEN")), "{job}: {:?}", run.lines(job));
    }
    // The fork bomb was contained by the process limit and did not take the engine down.
    assert_eq!(run.status("fork-bomb"), "failed");
    let reason = run.job("fork-bomb")["reason"].as_str().unwrap_or("").to_string();
    assert!(reason == "process limit exceeded (128)", "fork bomb reason: {reason}");
    assert!(run.lines("after-bomb").contains(&"engine still fine".to_string()));

    // Host side: nothing written, nothing survived, nothing leaked.
    for f in ["/usr/kiln-pwned", "/etc/kiln-pwned", "/kiln-pwned"] {
        assert!(!std::path::Path::new(f).exists(), "{f} exists on the host");
    }
    let survivors = std::process::Command::new("pgrep").args(["-f", "sleep 61[345]"]).output().unwrap();
    assert!(
        survivors.stdout.is_empty(),
        "background processes outlived their step: {}",
        String::from_utf8_lossy(&survivors.stdout)
    );
    let shadow = std::fs::read_to_string("/etc/shadow").unwrap_or_default();
    let root_line = shadow.lines().next().unwrap_or("root:").to_string();
    assert!(!run.stdout.contains(&root_line), "host /etc/shadow leaked through a step file");
    assert!(
        run.stdout.contains("ignored GITHUB_OUTPUT is not a regular file")
            || run.stdout.contains("GITHUB_OUTPUT"),
        "the symlinked step file was not reported"
    );
    let esc_lines = run.lines("terminal-escapes");
    let esc: Vec<&String> = esc_lines.iter().filter(|l| l.contains('\u{1b}')).collect();
    for l in &esc {
        let without_sgr = kiln_sgr_free(l);
        assert!(!without_sgr.contains('\u{1b}'), "a non-colour escape reached the log: {l:?}");
    }
    assert!(run.lines("terminal-escapes").iter().any(|l| l.starts_with("visible")));
    drop(listener);
});

/// Removes `ESC [ digits ; m` sequences.
fn kiln_sgr_free(s: &str) -> String {
    let re_end = |c: char| c == 'm';
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            let mut seq = String::new();
            chars.next();
            for c in chars.by_ref() {
                seq.push(c);
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
            if seq.ends_with(re_end) && seq[..seq.len() - 1].chars().all(|c| c.is_ascii_digit() || c == ';') {
                continue;
            }
            out.push('\u{1b}');
            out.push_str(&seq);
        } else {
            out.push(c);
        }
    }
    out
}

/// The host's own non-loopback IPv4 address, if it has one.
fn host_ip() -> Option<String> {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let addr = text.split_whitespace().skip_while(|w| *w != "inet").nth(1)?;
    Some(addr.split('/').next()?.to_string())
}

/// A step plants a link to a host file where the source has a file, then
/// checks out again: the copy replaces the link and writes nothing through
/// it (kiln runs as root on the host).
#[test]
fn bug_a_second_checkout_wrote_through_a_planted_link() {
    let host = tempfile::Builder::new().prefix("kiln-victim-").tempdir_in("/var/tmp").unwrap();
    let victim = host.path().join("passwd");
    std::fs::write(&victim, "host data\n").unwrap();
    let p = Project::new(&format!(
        "jobs:\n  twice:\n    steps:\n      - uses: actions/checkout@v4\n      - run: rm -f notes.txt && ln -s {} notes.txt && mkdir -p sub && rm -rf sub/dir && ln -s {} sub/dir\n      - uses: actions/checkout@v4\n      - run: |\n          if [ -L notes.txt ]; then echo still-a-link; else echo \"replaced: $(cat notes.txt)\"; fi\n",
        victim.display(),
        host.path().display()
    ));
    p.write("notes.txt", "from the source\n");
    p.write("sub/dir/inner.txt", "inner\n");
    let r = p.run("container", &[]);
    let text = r.all_text();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "host data\n", "written through the link: {text}");
    assert!(!host.path().join("inner.txt").exists(), "written through the directory link: {text}");
    // The directory link is an error naming it; the file link was replaced.
    assert_eq!(r.status("twice"), "failed", "{text}");
    assert!(text.contains("`dir` is a symbolic link"), "{text}");
}
