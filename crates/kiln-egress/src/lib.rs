//! kiln's egress proxy and its policy.
//!
//! Steps run with loopback-only networking. Inside the sandbox a relay
//! listens on 127.0.0.1 and forwards each TCP connection over a per-step Unix
//! socket to [`serve_unix`] on the host; steps get `HTTP_PROXY`/`HTTPS_PROXY`
//! pointing at the relay. The proxy speaks HTTP/1.1 (`CONNECT` tunnels and
//! absolute-form plain-HTTP requests), decides each destination with the
//! [`Policy`], connects to the exact address it vetted, counts bytes against
//! the build's cap and reports everything as [`EgressEvent`]s.

pub mod http;
pub mod policy;
mod proxy;

pub use policy::{
    check, is_metadata_name, normalize_host, parse_ip_literal, refused_reason, select_address, Decision,
    Host, HostRule, Policy, RuleError,
};
pub use proxy::{
    serve_tcp, serve_unix, BoxFuture, BuildCounters, EgressEvent, Resolver, StepScope, SystemResolver,
    CAP_BYTES_PER_BUILD, CAP_CONNS_PER_STEP, CONNECT_TIMEOUT, DEFAULT_BUILD_CAP_BYTES, HEAD_TIMEOUT,
    RESOLVE_TIMEOUT,
};
