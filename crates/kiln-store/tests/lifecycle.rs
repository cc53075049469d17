mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;
use kiln_store::provenance::{parse_public_key, PRIVATE_KEY_FILE, PUBLIC_KEY_FILE};
use kiln_store::*;

fn scope(trust: Trust, r: &str) -> Scope {
    Scope { tenant: "acme".into(), trust, ref_name: r.into() }
}

async fn tree_of(s: &Store, td: &tempfile::TempDir, name: &str, files: &[(&str, &[u8])]) -> TreeDigest {
    let dir = td.path().join("src").join(name);
    for (p, d) in files {
        write(&dir.join(p), d);
    }
    s.put_tree(&dir).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_scope_rules() {
    let (td, root) = new_store();
    let s = root.tenant("acme").unwrap();
    let t_main = tree_of(&s, &td, "main", &[("dep", b"trusted")]).await;
    let t_pr = tree_of(&s, &td, "pr", &[("dep", b"poisoned")]).await;

    let main = scope(Trust::Trusted, "main");
    let pr = scope(Trust::Untrusted, "pr-7");
    assert_eq!(write_scope(&pr), pr);
    assert_eq!(read_scopes(&pr, "main"), vec![pr.clone(), main.clone()]);
    assert_eq!(read_scopes(&main, "main"), vec![main.clone()]);
    let feature = scope(Trust::Trusted, "feature/x");
    assert_eq!(read_scopes(&feature, "main"), vec![feature.clone(), main.clone()]);

    // Untrusted build writes under the same key: trusted reads never see it.
    root.cache_put(&write_scope(&pr), "deps-v1", &t_pr).await.unwrap();
    assert_eq!(root.cache_get(&read_scopes(&main, "main"), "deps-v1", &[]).await.unwrap(), CacheLookup::Miss);
    assert_eq!(
        root.cache_get(&read_scopes(&feature, "main"), "deps-v1", &["deps-"]).await.unwrap(),
        CacheLookup::Miss
    );
    // The untrusted build reads its own entry.
    assert!(
        matches!(root.cache_get(&read_scopes(&pr, "main"), "deps-v1", &[]).await.unwrap(), CacheLookup::Hit { tree, .. } if tree == t_pr)
    );

    // Trusted default-branch entry is readable by an untrusted build of another ref.
    root.cache_put(&write_scope(&main), "lock-abc", &t_main).await.unwrap();
    let pr2 = scope(Trust::Untrusted, "pr-8");
    match root.cache_get(&read_scopes(&pr2, "main"), "lock-zzz", &["lock-"]).await.unwrap() {
        CacheLookup::Hit { key, tree, scope } => {
            assert_eq!((key.as_str(), tree, scope), ("lock-abc", t_main, main.clone()));
        }
        CacheLookup::Miss => panic!("expected restore-key hit"),
    }
    let out = td.path().join("restored");
    let hit = root
        .cache_restore(&read_scopes(&pr2, "main"), "lock-abc", &[], &out, &RestoreLimits::default())
        .await
        .unwrap();
    assert!(matches!(hit, CacheLookup::Hit { .. }));
    assert_eq!(std::fs::read(out.join("dep")).unwrap(), b"trusted");
    // Bad ref names refused.
    assert!(root.cache_put(&scope(Trust::Trusted, "../x"), "k", &t_main).await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_cache_blob_is_a_miss() {
    let (td, root) = new_store();
    let s = root.tenant("acme").unwrap();
    let t = tree_of(&s, &td, "m", &[("a/lib.js", b"good code"), ("b", b"other")]).await;
    let main = scope(Trust::Trusted, "main");
    root.cache_put(&main, "k", &t).await.unwrap();
    // Same-size tamper: only detected by hashing, during restore.
    tamper(&s, &Digest::of(b"good code"), b"evil code").await;
    let out = td.path().join("out");
    let r = root
        .cache_restore(std::slice::from_ref(&main), "k", &[], &out, &RestoreLimits::default())
        .await
        .unwrap();
    assert_eq!(r, CacheLookup::Miss);
    assert!(!out.exists(), "nothing restored");
    assert!(matches!(&root.take_events()[..], [StoreEvent::Quarantined { tenant, .. }] if tenant == "acme"));
    // Now the blob is quarantined: even the cheap lookup misses.
    assert_eq!(root.cache_get(std::slice::from_ref(&main), "k", &[]).await.unwrap(), CacheLookup::Miss);
    assert!(matches!(&root.take_events()[..], [StoreEvent::Unrestorable { .. }]));
    // A tampered manifest is a miss too.
    let t2 = tree_of(&s, &td, "n", &[("z", b"zzz")]).await;
    root.cache_put(&main, "k2", &t2).await.unwrap();
    let mf = blob_file(&td, "acme", &t2);
    let mut m = std::fs::read(&mf).unwrap();
    m[5] ^= 1;
    std::fs::write(&mf, m).unwrap();
    assert_eq!(root.cache_get(std::slice::from_ref(&main), "k2", &[]).await.unwrap(), CacheLookup::Miss);
    assert_eq!(root.take_events().len(), 1);
    // A blob that changed size is caught by the cheap lookup: quarantined, reported.
    // (Stored as a blob of its own first, so the tree does not pack it.)
    s.put_bytes(b"twelve bytes".to_vec()).await.unwrap();
    let t3 = tree_of(&s, &td, "o", &[("big", b"twelve bytes")]).await;
    root.cache_put(&main, "k3", &t3).await.unwrap();
    std::fs::write(blob_file(&td, "acme", &Digest::of(b"twelve bytes")), b"longer than twelve").unwrap();
    assert_eq!(root.cache_get(std::slice::from_ref(&main), "k3", &[]).await.unwrap(), CacheLookup::Miss);
    assert!(matches!(&root.take_events()[..], [StoreEvent::Quarantined { .. }]));
    // A blob that vanished is a reported miss too.
    s.put_bytes(b"soon gone".to_vec()).await.unwrap();
    let t4 = tree_of(&s, &td, "p", &[("gone", b"soon gone")]).await;
    root.cache_put(&main, "k4", &t4).await.unwrap();
    std::fs::remove_file(blob_file(&td, "acme", &Digest::of(b"soon gone"))).unwrap();
    assert_eq!(root.cache_get(&[main], "k4", &[]).await.unwrap(), CacheLookup::Miss);
    let ev = root.take_events();
    assert!(matches!(&ev[..], [StoreEvent::Unrestorable { .. }]), "{ev:?}");
    assert!(ev[0].to_string().contains("missing"), "{}", ev[0]);
}

fn record(id: TreeDigest, branch: &str, created: &str, pinned: bool) -> ArtifactRecord {
    ArtifactRecord {
        id,
        name: "web".into(),
        output_type: OutputType::Static,
        source: SourceInfo {
            repository: "https://git.example/acme/web".into(),
            commit: "abc123".into(),
            git_ref: format!("refs/heads/{branch}"),
        },
        build: BuildInfo {
            build_id: format!("b-{created}"),
            commands: vec!["npm ci".into(), "npm run build".into()],
            started_at: created.into(),
            finished_at: created.into(),
            exit_code: 0,
            builder_version: "0.1.0".into(),
            environment_digest: Digest::of(b"env").to_string(),
            image: None,
            tools: vec![],
        },
        files: vec![],
        created_at: created.into(),
        pinned,
        branch: branch.into(),
        expires_at: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_artifacts_go_first() {
    let (td, s) = new_store();
    let t1 = tree_of(&s, &td, "1", &[("a", b"one")]).await;
    let t2 = tree_of(&s, &td, "2", &[("a", b"two")]).await;
    let t3 = tree_of(&s, &td, "3", &[("a", b"three")]).await;
    let mut expired = record(t2, "main", "2025-01-02T00:00:00.000000000Z", false);
    expired.expires_at = Some("2025-01-03T00:00:00.000000000Z".into());
    let mut pinned_expired = record(t3, "main", "2025-01-03T00:00:00.000000000Z", true);
    pinned_expired.expires_at = Some("2025-01-04T00:00:00.000000000Z".into());
    let mut future = record(t1, "main", "2025-01-01T00:00:00.000000000Z", false);
    future.expires_at = Some(days_from_now(30));
    for r in [&future, &expired, &pinned_expired] {
        s.put_artifact(r).await.unwrap();
    }
    let policy = GcPolicy { keep_last_per_branch: 5, cache_max_bytes: 0, grace: Duration::ZERO };
    let report = s.gc(&policy, false).await.unwrap();
    // The expired one goes although the branch keeps five; a pinned one stays.
    assert_eq!(report.deleted_artifacts, vec![t2]);
    assert!(s.get_artifact(&t1).await.is_ok());
    assert!(s.get_artifact(&t3).await.is_ok());
    assert!(s.get_artifact(&t2).await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn artifacts_and_gc_dry_run_vs_real() {
    let (td, s) = new_store();
    let t1 = tree_of(&s, &td, "1", &[("index.html", b"v1"), ("shared.css", b"css")]).await;
    let t2 = tree_of(&s, &td, "2", &[("index.html", b"v2"), ("shared.css", b"css")]).await;
    let t3 = tree_of(&s, &td, "3", &[("index.html", b"v3"), ("shared.css", b"css")]).await;
    let tf = tree_of(&s, &td, "f", &[("index.html", b"feature")]).await;
    s.put_artifact(&record(t1, "main", "2025-01-01T00:00:00.000000000Z", true)).await.unwrap();
    s.put_artifact(&record(t2, "main", "2025-01-02T00:00:00.000000000Z", false)).await.unwrap();
    s.put_artifact(&record(t3, "main", "2025-01-03T00:00:00.000000000Z", false)).await.unwrap();
    s.put_artifact(&record(tf, "feature/x", "2025-01-02T00:00:00.000000000Z", false)).await.unwrap();
    assert_eq!(s.latest_artifact("main").await.unwrap(), Some(t3));
    let rec = s.get_artifact(&t3).await.unwrap();
    assert_eq!(rec.files.len(), 2);
    assert!(s.get_artifact(&t1).await.unwrap().pinned);

    // Two cache entries; cap fits only the most recently used one.
    let c_old = tree_of(&s, &td, "c1", &[("node_modules/a", &[1u8; 100])]).await;
    let c_new = tree_of(&s, &td, "c2", &[("node_modules/b", &[2u8; 100])]).await;
    let main = Scope { tenant: "default".into(), trust: Trust::Trusted, ref_name: "main".into() };
    s.cache_put(&main, "old", &c_old).await.unwrap();
    s.cache_put(&main, "new", &c_new).await.unwrap();
    assert!(matches!(
        s.cache_get(std::slice::from_ref(&main), "new", &[]).await.unwrap(),
        CacheLookup::Hit { .. }
    ));
    let _ = tree_of(&s, &td, "orphan", &[("junk", b"unreferenced")]).await;

    let policy = GcPolicy { keep_last_per_branch: 1, cache_max_bytes: 150, grace: Duration::ZERO };
    let before = s.list_blobs().await.unwrap().len();
    let dry = s.gc(&policy, true).await.unwrap();
    assert!(dry.dry_run);
    assert_eq!(dry.deleted_artifacts, vec![t2]);
    assert_eq!(dry.deleted_cache_entries, vec![("trusted/main".to_string(), "old".to_string())]);
    // t2's manifest and record blob, c_old's manifest, the orphan's
    // manifest; the trees' small files were packed, one pack per tree:
    // t2's ("v2"; its "css" was already in t1's), c_old's and the orphan's.
    assert_eq!(dry.deleted_blobs.len(), 4, "{dry:?}");
    assert_eq!(dry.deleted_packs.len(), 3, "{dry:?}");
    assert!(!dry.deleted_blobs.contains(&Digest::of(b"css")), "shared blob kept");
    assert_eq!(s.list_blobs().await.unwrap().len(), before, "dry run deletes nothing");
    assert!(s.get_artifact(&t2).await.is_ok());

    let real = s.gc(&policy, false).await.unwrap();
    assert_eq!(real.deleted_artifacts, dry.deleted_artifacts);
    assert_eq!(real.deleted_blobs, dry.deleted_blobs);
    assert_eq!(real.deleted_packs, dry.deleted_packs);
    assert_eq!(real.deleted_bytes, dry.deleted_bytes);
    assert_eq!(s.list_blobs().await.unwrap().len(), before - 4);
    assert!(matches!(s.get_artifact(&t2).await, Err(StoreError::NotFound(_))));
    for t in [t1, t3, tf] {
        let out = td.path().join(format!("out-{}", &t.hex()[..8]));
        s.restore_tree(&t, &out, &RestoreLimits::default()).await.unwrap();
        s.get_artifact(&t).await.unwrap();
    }
    assert_eq!(s.cache_get(std::slice::from_ref(&main), "old", &[]).await.unwrap(), CacheLookup::Miss);
    assert!(matches!(s.cache_get(&[main], "new", &[]).await.unwrap(), CacheLookup::Hit { .. }));
    // Idempotent.
    let again = s.gc(&policy, false).await.unwrap();
    assert!(
        again.deleted_blobs.is_empty()
            && again.deleted_packs.is_empty()
            && again.deleted_artifacts.is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn provenance_sign_and_verify() {
    let (td, s) = new_store();
    let t = tree_of(&s, &td, "a", &[("index.html", b"<h1>hi</h1>"), ("app.js", b"ok")]).await;
    let other = tree_of(&s, &td, "b", &[("x", b"y")]).await;
    let rec = record(t, "main", "2025-01-01T00:00:00.000000000Z", false);
    s.put_artifact(&rec).await.unwrap();
    s.put_artifact(&record(other, "main", "2025-01-01T00:00:01.000000000Z", false)).await.unwrap();
    let keys = Keys::load_or_create(td.path().join("state")).unwrap();
    let st = statement_for(&s.get_artifact(&t).await.unwrap(), "https://kiln.dev/builder", true, vec![]);
    let env = keys.sign(&st);

    // Shape.
    let json: serde_json::Value = serde_json::to_value(&env).unwrap();
    assert_eq!(json["payloadType"], "application/vnd.in-toto+json");
    let payload: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::STANDARD, env.payload.as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(payload["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(payload["predicateType"], "https://slsa.dev/provenance/v1");
    assert_eq!(payload["subject"][0]["digest"]["sha256"], t.hex());
    assert_eq!(payload["predicate"]["hermetic"], true);
    assert_eq!(payload["predicate"]["buildDefinition"]["externalParameters"]["source"]["commit"], "abc123");
    assert_eq!(payload["predicate"]["runDetails"]["metadata"]["invocationId"], rec.build.build_id);

    // Good.
    let pk = keys.public_key();
    verify(&env, &pk, &s, &t).await.unwrap();
    // Public key printable & reloadable; same key on reload.
    let printed = std::fs::read_to_string(td.path().join("state").join(PUBLIC_KEY_FILE)).unwrap();
    assert_eq!(parse_public_key(&printed), Some(pk));
    assert_eq!(Keys::load_or_create(td.path().join("state")).unwrap().keyid(), keys.keyid());
    let mode =
        std::fs::metadata(td.path().join("state").join(PRIVATE_KEY_FILE)).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // Subject mismatch: a valid envelope about a different artifact.
    assert!(matches!(verify(&env, &pk, &s, &other).await, Err(VerifyError::SubjectMismatch { .. })));
    // Modified statement.
    let mut st2 = st.clone();
    st2.predicate.hermetic = false;
    let mut forged = env.clone();
    forged.payload = keys.sign(&st2).payload;
    assert!(matches!(verify(&forged, &pk, &s, &t).await, Err(VerifyError::BadSignature { .. })));
    // Wrong key.
    let other_keys = Keys::generate().unwrap();
    assert!(matches!(
        verify(&env, &other_keys.public_key(), &s, &t).await,
        Err(VerifyError::WrongKey { .. })
    ));
    // Signature by another key that claims our keyid.
    let mut impostor = other_keys.sign(&st);
    impostor.signatures[0].keyid = keys.keyid();
    assert!(matches!(verify(&impostor, &pk, &s, &t).await, Err(VerifyError::BadSignature { .. })));
    // Modified file.
    tamper(&s, &Digest::of(b"ok"), b"no").await;
    match verify(&env, &pk, &s, &t).await {
        Err(VerifyError::FileDigestMismatch { path, .. }) => assert_eq!(path, "app.js"),
        other => panic!("{other:?}"),
    }

    // Insecure private key permissions are refused.
    std::fs::set_permissions(
        td.path().join("state").join(PRIVATE_KEY_FILE),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    assert!(matches!(
        Keys::load_or_create(td.path().join("state")),
        Err(kiln_store::provenance::KeyError::InsecurePermissions { .. })
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn bug_gc_deleted_the_provenance_of_kept_artifacts() {
    let (td, s) = new_store();
    let t1 = tree_of(&s, &td, "1", &[("a", b"kept")]).await;
    s.put_artifact(&record(t1, "main", "2025-01-01T00:00:00.000000000Z", false)).await.unwrap();
    let envelope = s.put_bytes(b"{\"payloadType\":\"...\"}".to_vec()).await.unwrap().digest;
    s.set_provenance(&t1, "b-2025-01-01T00:00:00.000000000Z", envelope).await.unwrap();
    let policy = GcPolicy { keep_last_per_branch: 5, cache_max_bytes: 0, grace: Duration::ZERO };
    let report = s.gc(&policy, false).await.unwrap();
    assert!(!report.deleted_blobs.contains(&envelope), "{report:?}");
    assert!(s.get_bytes(&envelope, None).await.is_ok(), "the kept artifact's provenance is gone");
    // When the artifact goes, its provenance goes with it.
    let policy = GcPolicy { keep_last_per_branch: 0, cache_max_bytes: 0, grace: Duration::ZERO };
    let report = s.gc(&policy, false).await.unwrap();
    assert!(report.deleted_blobs.contains(&envelope), "{report:?}");
}

/// Two builds that upload the same bytes share the tree's blobs, not a
/// record: each keeps its own name, retention and provenance, and gc
/// deleting one build's expired record leaves the other build's artifact
/// whole.
#[tokio::test(flavor = "multi_thread")]
async fn bug_artifact_records_were_shared_by_content_digest() {
    let (td, s) = new_store();
    let t = tree_of(&s, &td, "same", &[("index.html", b"the same bytes")]).await;
    let mut kept = record(t, "main", "2025-01-01T00:00:00.000000000Z", false);
    kept.name = "site".into();
    kept.expires_at = Some(days_from_now(30));
    let mut expiring = record(t, "main", "2025-01-02T00:00:00.000000000Z", false);
    expiring.name = "preview".into();
    expiring.expires_at = Some("2025-01-03T00:00:00.000000000Z".into());
    s.put_artifact(&kept).await.unwrap();
    s.put_artifact(&expiring).await.unwrap();
    let (b1, b2) = (kept.build.build_id.clone(), expiring.build.build_id.clone());
    let env1 = s.put_bytes(b"{\"one\":1}".to_vec()).await.unwrap().digest;
    let env2 = s.put_bytes(b"{\"two\":2}".to_vec()).await.unwrap().digest;
    s.set_provenance(&t, &b1, env1).await.unwrap();
    s.set_provenance(&t, &b2, env2).await.unwrap();
    // Each build reads its own record; the newest is the tree's default.
    assert_eq!(s.get_artifact_of(&t, &b1).await.unwrap().name, "site");
    assert_eq!(s.get_artifact_of(&t, &b2).await.unwrap().name, "preview");
    assert_eq!(s.get_artifact(&t).await.unwrap().name, "preview");
    assert_eq!(s.list_artifacts().await.unwrap().len(), 2);
    let policy = GcPolicy { keep_last_per_branch: 5, cache_max_bytes: 0, grace: Duration::ZERO };
    let report = s.gc(&policy, false).await.unwrap();
    assert_eq!(report.deleted_artifacts, vec![t], "only the expired record goes");
    // The other build's artifact is whole: record, files, provenance.
    let rec = s.get_artifact_of(&t, &b1).await.unwrap();
    assert_eq!(rec.name, "site");
    assert!(s.get_manifest(&t).await.is_ok());
    for f in &rec.files {
        assert!(s.get_bytes(&f.digest, None).await.is_ok(), "{} is gone", f.path);
    }
    assert!(s.get_bytes(&env1, None).await.is_ok(), "the kept record's provenance is gone");
    assert!(report.deleted_blobs.contains(&env2), "the deleted record's provenance stays: {report:?}");
    assert!(s.get_artifact_of(&t, &b2).await.is_err());
    assert_eq!(s.latest_artifact("main").await.unwrap(), Some(t), "the branch still has it");
    // A build id that is not a file name cannot name another path.
    let mut odd = record(t, "main", "2025-01-04T00:00:00.000000000Z", false);
    odd.build.build_id = "../../refs/branches/main/latest".into();
    s.put_artifact(&odd).await.unwrap();
    assert_eq!(s.latest_artifact("main").await.unwrap(), Some(t));
    assert_eq!(
        s.get_artifact_of(&t, "../../refs/branches/main/latest").await.unwrap().created_at,
        odd.created_at
    );
}
