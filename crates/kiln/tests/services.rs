//! `services:`: a job's service containers run as sandboxes on their own
//! images while the job runs, reached from the job's steps by name and on
//! `localhost` for a mapped port, on both tiers. The common case people's
//! workflows have — PostgreSQL with a `pg_isready` health check — runs on
//! an image built here from Debian's `postgresql` package.

mod common;

use common::{Project, Run};

const IMAGE: &str = "test/postgres";

fn postgres_image(p: &Project) -> serde_json::Value {
    p.shared_image(IMAGE, &["--suite", "trixie", "--packages", "postgresql"])
}

fn run(p: &Project, tier: &str) -> Run {
    postgres_image(p);
    run_as_is(p, tier)
}

/// `kiln run ci.yml` with the shared image store, the images already there.
fn run_as_is(p: &Project, tier: &str) -> Run {
    let out = p
        .kiln_with_images()
        .args(["run", "ci.yml", "--json", "--isolation", tier])
        .output()
        .expect("run kiln");
    Run::parse(out)
}

/// A PostgreSQL server as the step user: a cluster in `/tmp`, listening
/// on the sandbox's loopback (`PORT` from the service's env).
const POSTGRES: &str = r#"sh -c 'PG=$(ls -d /usr/lib/postgresql/*/bin); $PG/initdb -U postgres --auth=trust >/dev/null && exec $PG/postgres -k /tmp -p $PORT -c listen_addresses=127.0.0.1'"#;

fn workflow() -> String {
    format!(
        r#"
jobs:
  test:
    runs-on: ubuntu-latest
    container: {IMAGE}
    services:
      postgres:
        image: {IMAGE}
        env: {{ PGDATA: /tmp/pg, PORT: "5432" }}
        command: {POSTGRES}
        ports: ["5432:5432"]
        options: >-
          --health-cmd "pg_isready -h 127.0.0.1 -U postgres"
          --health-interval 10s --health-timeout 5s --health-retries 10
      # No mapped port and no health check: reached by name, on the port
      # kiln gives it on localhost, once it listens.
      replica:
        image: {IMAGE}
        env: {{ PGDATA: /tmp/pg, PORT: "5433" }}
        command: {POSTGRES}
        ports: ["5433"]
    steps:
      - name: by name
        run: psql -h postgres -U postgres -c 'create table t(x int)' -c 'insert into t values (42)'
      - name: on localhost
        run: psql -h localhost -p 5432 -U postgres -tAc 'select x from t'
      - name: the other service by name and on its given port
        run: |
          echo "replica port ${{{{ job.services.replica.ports['5433'] }}}}"
          psql -h replica -p 5433 -U postgres -tAc 'select 7'
          psql -h 127.0.0.1 -p ${{{{ job.services.replica.ports['5433'] }}}} -U postgres -tAc 'select 8'
      - name: only declared ports are reachable
        run: |
          if (exec 3<>/dev/tcp/postgres/5433) 2>/dev/null; then echo "BROKEN: an undeclared port"; exit 1; fi
          if ls /kiln/dial 2>/dev/null; then echo "BROKEN: the dial socket is here"; exit 1; fi
          echo "only declared"
  other:
    runs-on: ubuntu-latest
    steps:
      - run: echo "no services here"
"#
    )
}

per_tier!(a_postgres_service_is_reached_by_name_and_on_localhost, |tier| {
    let p = Project::new(&workflow());
    // `kiln validate` names a job's services.
    let out = p.kiln_with_images().args(["validate", "ci.yml"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("run   test (4 steps, services: postgres, replica)"), "{text}");
    let r = run(&p, tier);
    r.expect_code(0);
    r.assert_lines("test", &["42", "replica port 49152", "7", "8", "only declared"]);
    let sys = r.system_lines("test");
    assert!(sys.iter().any(|l| l.starts_with("service postgres: ready in")), "{sys:?}");
    assert!(sys.iter().any(|l| l.starts_with("service replica: ready in")), "{sys:?}");
    // The service's own output is the job's, under its name.
    let said: Vec<&serde_json::Value> =
        r.entries.iter().filter(|e| e["job"] == "test" && e["step"] == "service postgres").collect();
    assert!(
        said.iter().any(|e| e["text"].as_str().unwrap_or("").contains("ready to accept connections")),
        "{said:?}"
    );
    assert_eq!(r.status("other"), "succeeded");
    // Nothing of the services outlives the job.
    let build = r.summary["build"].as_str().expect("build id");
    let left: Vec<String> = std::fs::read_dir("/run/kiln/egress")
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert!(!left.iter().any(|n| n.contains(build)), "socket dirs left: {left:?}");
});

#[test]
fn a_service_that_never_gets_healthy_or_reads_a_secret_fails_only_its_job() {
    let p = Project::new(&format!(
        r#"
jobs:
  unhealthy:
    runs-on: ubuntu-latest
    services:
      db:
        image: {IMAGE}
        command: sleep 600
        options: --health-cmd "exit 3" --health-interval 1s --health-timeout 1s --health-retries 2
    steps:
      - run: echo "BROKEN, steps ran"
  leaky:
    runs-on: ubuntu-latest
    services:
      db:
        image: {IMAGE}
        command: sleep 600
        env: {{ PASSWORD: "${{{{ secrets.DB }}}}" }}
    steps:
      - run: echo "BROKEN, steps ran"
  other:
    runs-on: ubuntu-latest
    steps:
      - run: echo fine
"#
    ));
    let r = run(&p, "gvisor");
    r.expect_code(1);
    assert!(!r.all_text().contains("BROKEN"), "{}", r.all_text());
    let reason = r.job("unhealthy")["reason"].as_str().unwrap_or("").to_string();
    assert_eq!(r.status("unhealthy"), "failed", "{reason}");
    assert!(reason.contains("service db: unhealthy: `exit 3` did not pass"), "{reason}");
    let reason = r.job("leaky")["reason"].as_str().unwrap_or("").to_string();
    assert!(reason.contains("service db: env `PASSWORD` may not read `secrets`"), "{reason}");
    assert_eq!(r.status("other"), "succeeded");
}

/// An imported OCI image says how it runs as a service: its `Cmd`, `Env`
/// and `ExposedPorts` (as the images people pull from a registry do), so
/// the workflow names only the image.
#[test]
fn an_imported_image_runs_as_a_service_by_its_own_config() {
    let p = Project::new(&format!(
        r#"
jobs:
  test:
    runs-on: ubuntu-latest
    container: {IMAGE}
    services:
      db:
        image: test/pg-oci:1
    steps:
      - run: psql -h db -p 5432 -U postgres -tAc 'select 40 + 2'
"#
    ));
    let built = postgres_image(&p);
    let found = std::process::Command::new("sh").arg("-c").arg("command -v umoci").output();
    assert!(
        found.map(|o| o.status.success()).unwrap_or(false),
        "`umoci` is not installed: run scripts/install.sh"
    );
    let hex = built["digest"].as_str().expect("digest").trim_start_matches("sha256:").to_string();
    let tree = p.state_dir().join("images").join(hex);
    assert!(tree.is_dir(), "kiln image build extracts the image: {}", tree.display());
    let dir = p.path().join("oci");
    std::fs::create_dir_all(&dir).unwrap();
    let (l, b) = (dir.join("L"), dir.join("B"));
    let script = format!(
        "set -e; umoci init --layout {l}; umoci new --image {l}:t; umoci unpack --image {l}:t {b} >/dev/null; \
         cp -a {tree}/. {b}/rootfs/; umoci repack --image {l}:t {b}; \
         umoci config --image {l}:t --config.env PGDATA=/tmp/pg --config.exposedports 5432/tcp \
           --config.cmd sh --config.cmd -c \
           --config.cmd 'PG=$(ls -d /usr/lib/postgresql/*/bin); $PG/initdb -U postgres --auth=trust >/dev/null && exec $PG/postgres -k /tmp -c listen_addresses=127.0.0.1'; \
         tar -C {l} -cf {d}/img.tar .",
        l = l.display(),
        b = b.display(),
        tree = tree.display(),
        d = dir.display()
    );
    let out = std::process::Command::new("sh").arg("-c").arg(&script).output().expect("sh");
    assert!(out.status.success(), "making the OCI archive: {}", String::from_utf8_lossy(&out.stderr));
    let out = p
        .kiln_with_images()
        .args(["image", "import"])
        .arg(dir.join("img.tar"))
        .arg("test/pg-oci:1")
        .output()
        .expect("kiln image import");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r = run_as_is(&p, "container");
    r.expect_code(0);
    r.assert_lines("test", &["42"]);
}

/// A step opens 400 connections to a service at once and holds them:
/// the job goes on (kiln's relay holds up; it carries at most 256 into one
/// service, a cap this test does not isolate), the first connection is
/// served meanwhile, and once the step ends the service answers again.
#[test]
fn a_connection_flood_into_a_service_leaves_it_answering() {
    let p = Project::new(
        r#"
jobs:
  flood:
    runs-on: ubuntu-latest
    # Room for the step's 400 connections (two relay threads each in the
    # job's kiln-init): the default process limit would stop the flood
    # first, which is the other line of defence.
    kiln: { pids: 4096 }
    services:
      web:
        image: kiln/runner
        command: python3 -m http.server 8000 --bind 127.0.0.1 --directory /etc
        ports: ["8000"]
    steps:
      - run: |
          trap '' PIPE
          fds=()
          for i in $(seq 400); do exec {fd}<>/dev/tcp/web/8000 && fds+=("$fd"); done
          ask() { printf 'GET /hostname HTTP/1.0\r\n\r\n' >&"$1" 2>/dev/null; timeout 5 head -c 12 <&"$1" 2>/dev/null || true; }
          first=$(ask "${fds[0]}")
          echo "held ${#fds[@]}, first: ${first:-no answer}"
      - run: curl -s -o /dev/null -w "after %{http_code}\n" http://web:8000/hostname
"#,
    );
    p.shared_image("kiln/runner", &[]);
    let r = run_as_is(&p, "container");
    r.expect_code(0);
    r.assert_lines("flood", &["held 400, first: HTTP/1.0 200", "after 200"]);
}
