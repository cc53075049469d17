//! Object-storage servers on loopback for the tests: moto's S3-compatible
//! server and Azurite, as `scripts/test-deps.sh` installs them.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln_store::Store;

/// Where `scripts/test-deps.sh` put the servers.
fn deps() -> PathBuf {
    let dir = PathBuf::from(std::env::var("KILN_TEST_DEPS").unwrap_or_else(|_| "/opt/kiln-test".into()));
    for need in ["py/bin/moto_server", "azurite/node_modules/.bin/azurite-blob"] {
        assert!(
            dir.join(need).exists(),
            "{} is missing: run scripts/test-deps.sh (it installs the object-storage servers these tests use)",
            dir.join(need).display()
        );
    }
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for_port(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before it listened: {status}");
        }
        assert!(Instant::now() < deadline, "{what} did not listen on 127.0.0.1:{port} within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A server on loopback and how kiln reaches a bucket in it.
pub struct Backend {
    pub name: &'static str,
    /// The store's URL (`s3://kiln/store`, `az://kiln/store`).
    pub url: String,
    /// The settings kiln reads from its environment for it.
    pub env: Vec<(String, String)>,
    server: Child,
    _data: tempfile::TempDir,
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

impl Backend {
    pub fn s3() -> Backend {
        let deps = deps();
        let port = free_port();
        let data = tempfile::tempdir().unwrap();
        let mut server = Command::new(deps.join("py/bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto_server");
        wait_for_port(port, "moto_server", &mut server);
        let endpoint = format!("http://127.0.0.1:{port}");
        // The bucket (moto takes an unsigned request).
        let status = Command::new("curl")
            .args(["-sf", "-X", "PUT", &format!("{endpoint}/kiln")])
            .status()
            .expect("curl");
        assert!(status.success(), "creating the bucket failed");
        let env = [
            ("AWS_ENDPOINT_URL", endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", "kiln-test"),
            ("AWS_SECRET_ACCESS_KEY", "kiln-test-secret"),
            ("AWS_REGION", "us-east-1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        Backend { name: "s3 (moto)", url: "s3://kiln/store".into(), env, server, _data: data }
    }

    pub fn azure() -> Backend {
        let deps = deps();
        let port = free_port();
        let data = tempfile::tempdir().unwrap();
        let mut server = Command::new(deps.join("azurite/node_modules/.bin/azurite-blob"))
            // The newest Python SDK speaks an API version newer than Azurite's.
            .args([
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &port.to_string(),
                "--silent",
                "--skipApiVersionCheck",
            ])
            .arg("--location")
            .arg(data.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting azurite-blob");
        wait_for_port(port, "azurite-blob", &mut server);
        let blob_url = format!("http://127.0.0.1:{port}");
        // Azurite's well-known development account.
        let (account, key) = (
            "devstoreaccount1",
            "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==",
        );
        let conn = format!(
            "DefaultEndpointsProtocol=http;AccountName={account};AccountKey={key};BlobEndpoint={blob_url}/{account};"
        );
        let out = Command::new(deps.join("py/bin/python"))
            .args([
                "-c",
                "import sys; from azure.storage.blob import BlobServiceClient as C; \
                 C.from_connection_string(sys.argv[1]).create_container('kiln')",
                &conn,
            ])
            .output()
            .expect("python");
        assert!(
            out.status.success(),
            "creating the container failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // As for any account behind its own endpoint (path-style, as Azurite serves it).
        let endpoint = format!("{blob_url}/{account}");
        let env = [
            ("AZURE_STORAGE_ENDPOINT", endpoint.as_str()),
            ("AZURE_ALLOW_HTTP", "true"),
            ("AZURE_STORAGE_ACCOUNT_NAME", account),
            ("AZURE_STORAGE_ACCOUNT_KEY", key),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        Backend { name: "azure (Azurite)", url: "az://kiln/store".into(), env, server, _data: data }
    }

    pub fn store(&self) -> Store {
        let opts = self.env.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone()));
        Store::open_url_with(&self.url, opts)
            .unwrap_or_else(|e| panic!("{}: opening {}: {e}", self.name, self.url))
    }
}
