//! kiln's artifact scanning gate.
//!
//! After a build, the files of its output pass through a [`Scanner`] before the artifact is
//! released. A [`ScanReport`] lists [`Finding`]s and a [`Verdict`]: any high-confidence finding
//! quarantines the artifact, low-confidence findings only flag it for a human.
//!
//! # Rules are data
//!
//! The built-in rules live in `src/rules.json` (embedded with `include_str!`);
//! [`Scanner::with_extra_rules`] adds more in the same format. The file is
//! `{"rules": [RULE, ...]}` and a rule is:
//!
//! | field | meaning |
//! | --- | --- |
//! | `id` | unique name, shown in findings (`reverse-shell-devtcp`) |
//! | `description` | one line for a human |
//! | `confidence` | `high` (quarantine) or `low` (flag) |
//! | `kind` | `literal`, `regex`, `magic`, `filename`, `entropy` or `symlink` (below) |
//! | `patterns` | what to look for; its meaning depends on `kind` |
//! | `applies_to` | output kinds the rule runs on: `static`, `server`, `function` (default: all) |
//! | `extensions` | only files whose name ends in one of these (`[".js"]`; default: every file) |
//! | `ignore_case` | `literal` and `filename`: ASCII case-insensitive (default `false`) |
//! | `prefilter` | `regex`: literals, one of which must occur in the file before the regexes run |
//! | `max_size` | `regex` without `prefilter`: only files up to this many bytes (default 1 MiB) |
//! | `min_matches` | `regex`: matches needed in one file (default 1) |
//! | `min_line_length`, `min_entropy` | `entropy`: a line at least this long whose Shannon entropy in bits per byte is at least this |
//!
//! Kinds:
//!
//! * `literal`: any of the strings occurs anywhere in the file.
//! * `regex`: any of the byte regexes matches. They are compiled with Unicode off: `\w`, `\s`,
//!   `\b` are ASCII and `.` is any byte but `\n` (`(?s-u:.)` is any byte), so a binary file
//!   does not push the engine off its fast path.
//! * `magic`: the file starts with a known executable header: `elf` (`\x7fELF`), `pe` (`MZ`
//!   whose `e_lfanew` at offset 0x3c points at `PE\0\0`), `macho` (the 32/64-bit magics in
//!   both byte orders, and a universal binary whose architecture count is 1..=16, which tells it
//!   apart from a Java class file that shares `0xcafebabe`), or `hex:<bytes>` for any other
//!   prefix.
//! * `filename`: the file's base name (at any depth) is one of the patterns.
//! * `entropy`: a single line is long and dense, like an encoded or encrypted payload.
//! * `symlink`: the entry is a symbolic link (from the caller's manifest).
//!
//! The built-in set:
//!
//! | id | confidence | applies to | what |
//! | --- | --- | --- | --- |
//! | `eicar` | high | all | the EICAR test string (stored `\u0024`-escaped so the source is not itself a test file) |
//! | `reverse-shell-devtcp` | high | all | `sh -i` / `bash -i` on the same line as `/dev/tcp/` or `/dev/udp/` |
//! | `reverse-shell-netcat` | high | all | `nc -e /bin/sh`, `sh -i … \| nc`, `ncat --exec`, `socat … exec:` |
//! | `reverse-shell-python` | high | all | `socket.socket(` then, within 600 bytes, `pty.spawn(` or `subprocess.call(["/bin/sh"` |
//! | `reverse-shell-perl` | high | all | `socket(S, PF_INET …` then, within 600 bytes, `exec "/bin/sh` |
//! | `reverse-shell-php` | high | all | `fsockopen(` then, within 400 bytes, `exec("/bin/sh` (or `system`, `passthru`, …) |
//! | `crypto-miner` | high | all | `stratum+tcp://`, `stratum+ssl://`, `stratum+tls://`, `xmrig`, `coinhive`, `cryptonight` |
//! | `executable-in-static` | high | static | ELF, PE or Mach-O files (they are expected in server and function outputs) |
//! | `js-eval-atob` | low | all (`.js`, `.mjs`, `.cjs`) | `eval(atob(` |
//! | `js-packer` | low | all (js) | `eval(function(p,a,c,k,e,` |
//! | `js-hex-escapes` | low | all (js) | 64 or more `\xNN` escapes in a row |
//! | `js-hex-identifiers` | low | all (js) | 30 or more `_0x1a2b`-style identifiers in one file |
//! | `js-fromcharcode` | low | all (js) | `String.fromCharCode(` with 20 or more numeric arguments |
//! | `js-high-entropy-line` | low | all (js) | a line of 4096+ bytes with 5.7+ bits of entropy per byte |
//! | `deploy-config-override` | low | static | `vercel.json`, `netlify.toml`, `_headers`, `_redirects`, `.htaccess`, `web.config`, … at any depth |
//! | `symlink-in-static` | low | static | any symbolic link |
//!
//! The JavaScript thresholds were chosen against ordinary minified bundles: minifiers name
//! variables with one or two letters (never `_0x…`), keep `\x` escapes to the odd control
//! character in a regex class, and produce text whose byte entropy stays around 5.0–5.4 bits;
//! base64 of random data is close to 6 bits and hex to 4, so a 4 KiB line at 5.7 bits or more is
//! mostly an encoded blob. Inlined images in a bundle can trip it, which is why it is only `low`.
//!
//! # Why aho-corasick and regex rather than a YARA engine
//!
//! The rules are literals and a few small regexes. Every literal of every rule (the `literal`
//! patterns and the `regex` prefilters) goes into one Aho-Corasick automaton, so each file is
//! read once whatever the number of rules, and a regex only runs on a file where one of its
//! prefilter literals occurred. A YARA engine would add little for rules this simple, while
//! the maintained Rust one (yara-x) brings a large compile-time cost (it embeds wasmtime),
//! which the project's 2-core CI pays on every build. Keeping rules as JSON keeps them
//! reviewable in a diff and lets an operator extend them without a rebuild.
//!
//! # ClamAV
//!
//! [`Scanner::with_clamd`] adds a clamd daemon ([`Clamd`]): every file is streamed to it with
//! `INSTREAM`. A daemon that cannot be reached is retried with backoff for the configured wait,
//! then the scan fails with [`ScanError::Unavailable`]: a scan never silently skips a scanner.
//! A signature hit is a high finding of the rule `clamav` naming the signature.

mod clamd;
mod rules;
mod scanner;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use clamd::{Clamd, ClamdError, ClamdVerdict};
pub use rules::{Confidence, Rule, RuleKind};
pub use scanner::{Finding, ScanInput, ScanReport, Scanner, Verdict};

/// What a build's output is, which decides the rules that apply to it (a native executable is
/// expected in a server, not in a static site).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// Files served as they are (HTML, JS, CSS, images).
    Static,
    /// A program that runs as a long-lived server.
    Server,
    /// A unit a platform runs on demand (a function bundle, a Python wheel).
    Function,
}

impl OutputKind {
    /// All kinds, in a stable order.
    pub const ALL: [OutputKind; 3] = [OutputKind::Static, OutputKind::Server, OutputKind::Function];

    /// The lower-case name used in JSON and configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputKind::Static => "static",
            OutputKind::Server => "server",
            OutputKind::Function => "function",
        }
    }
}

impl fmt::Display for OutputKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OutputKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "static" => Ok(OutputKind::Static),
            "server" => Ok(OutputKind::Server),
            "function" => Ok(OutputKind::Function),
            other => Err(format!("unknown output kind {other:?} (expected static, server or function)")),
        }
    }
}

/// Why a scan could not give a verdict. A scan error must keep the artifact from being
/// released: it is never a reason to skip the gate.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// A rule file is not valid.
    #[error("invalid scan rule{}: {message}", rule.as_ref().map(|r| format!(" `{r}`")).unwrap_or_default())]
    Rules {
        /// The rule's id, when the problem is in one rule.
        rule: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// An external scanner could not be reached within the configured wait.
    #[error("{scanner} unavailable after waiting {waited:?}: {last_error}")]
    Unavailable {
        /// Which scanner (`clamd`).
        scanner: String,
        /// How long kiln waited for it.
        waited: Duration,
        /// The last connection error.
        last_error: String,
    },
    /// An external scanner answered with an error or something unexpected.
    #[error("{scanner} failed on {path}: {message}")]
    Scanner {
        /// Which scanner (`clamd`).
        scanner: String,
        /// The file being scanned.
        path: String,
        /// The scanner's answer or the I/O error.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scanner_is_shareable_across_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Scanner>();
        shareable::<ScanReport>();
    }

    #[test]
    fn output_kind_round_trips() {
        for k in OutputKind::ALL {
            assert_eq!(k.as_str().parse::<OutputKind>().unwrap(), k);
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{k}\""));
        }
        assert!("Static".parse::<OutputKind>().is_err());
    }
}
