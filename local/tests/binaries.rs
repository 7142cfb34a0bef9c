//! The shipped binaries as an operator runs them: `agentidp-local` on a data directory, and
//! `agentidp-admin` on the same directory while the server runs.

#![expect(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_server(data_dir: &Path) -> Server {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_agentidp-local"))
        // A fixed issuer: the port changes between starts, and tokens must outlive a restart.
        .args([
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--port",
            &port.to_string(),
            "--issuer",
            "http://localhost:3000",
        ])
        .env("AGENTIDP_BCRYPT_COST", "4")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "agentidp-local did not start listening"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Server { child, base }
}

fn admin(data_dir: &Path, args: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_agentidp-admin"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env("AGENTIDP_BCRYPT_COST", "4")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "agentidp-admin {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

async fn token(base: &str, client_id: &str, secret: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}/api/v1/token"))
        .basic_auth(client_id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
}

fn bootstrap(data_dir: &Path) -> (String, String) {
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(data_dir.join("bootstrap.json")).unwrap())
            .unwrap();
    (
        file["clientId"].as_str().unwrap().to_owned(),
        file["clientSecret"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn first_start_writes_a_private_bootstrap_credential_that_gets_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path());
    let (client_id, secret) = bootstrap(dir.path());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for file in ["bootstrap.json", "signing-keys.json"] {
            let mode = std::fs::metadata(dir.path().join(file))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "{file}");
        }
    }
    let response = token(&server.base, &client_id, &secret).await;
    assert_eq!(response.status(), 200);
}

/// Permission bits of every entry of `dir`, by name, and of `dir` itself under ".".
#[cfg(unix)]
fn modes(dir: &Path) -> Vec<(String, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let mut seen = vec![(".".to_owned(), mode(dir))];
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        seen.push((
            entry.file_name().into_string().unwrap(),
            mode(&entry.path()),
        ));
    }
    seen.sort();
    seen
}

#[cfg(unix)]
#[tokio::test]
async fn the_data_directory_and_every_file_in_it_are_private_to_their_owner() {
    let parent = tempfile::tempdir().unwrap();
    // The server creates its data directory; the CLI, another one.
    let served = parent.path().join("served");
    let server = start_server(&served);
    let (client_id, secret) = bootstrap(&served);
    assert_eq!(token(&server.base, &client_id, &secret).await.status(), 200);
    let operated = parent.path().join("operated");
    admin(
        &operated,
        &["create-org", "--name", "private", "--plan", "free"],
    );
    for dir in [&served, &operated] {
        let seen = modes(dir);
        // The running server holds the database open, so its write-ahead log exists.
        assert!(
            dir != &served || seen.iter().any(|(name, _)| name == "agentidp.db-wal"),
            "{seen:?}"
        );
        for (name, mode) in &seen {
            let private = if name == "." { 0o700 } else { 0o600 };
            assert_eq!(*mode, private, "{}: {name} in {seen:?}", dir.display());
        }
    }
}

#[cfg(unix)]
#[test]
fn a_database_file_left_world_readable_is_made_private_on_open() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    admin(
        dir.path(),
        &["create-org", "--name", "before", "--plan", "free"],
    );
    for (name, _) in modes(dir.path()) {
        if name != "." {
            std::fs::set_permissions(
                dir.path().join(name),
                std::fs::Permissions::from_mode(0o644),
            )
            .unwrap();
        }
    }
    admin(dir.path(), &["list-orgs"]);
    for (name, mode) in modes(dir.path()) {
        if name.starts_with("agentidp.db") {
            assert_eq!(mode, 0o600, "{name}");
        }
    }
}

#[tokio::test]
async fn data_and_keys_survive_a_restart_and_no_second_bootstrap_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let (client_id, secret, access_token) = {
        let server = start_server(dir.path());
        let (client_id, secret) = bootstrap(dir.path());
        let body: Value = token(&server.base, &client_id, &secret)
            .await
            .json()
            .await
            .unwrap();
        (
            client_id,
            secret,
            body["access_token"].as_str().unwrap().to_owned(),
        )
    };
    let before = std::fs::read_to_string(dir.path().join("bootstrap.json")).unwrap();
    let server = start_server(dir.path());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("bootstrap.json")).unwrap(),
        before
    );
    assert_eq!(
        admin(dir.path(), &["list-orgs"]).as_array().unwrap().len(),
        1
    );
    let introspection: Value = reqwest::Client::new()
        .post(format!("{}/api/v1/token/introspect", server.base))
        .basic_auth(&client_id, Some(&secret))
        .form(&[("token", access_token.as_str())])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        introspection["active"], true,
        "a token from before the restart still verifies"
    );
}

#[tokio::test]
async fn the_operator_cli_works_on_the_data_directory_while_the_server_runs() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path());
    let created = admin(
        dir.path(),
        &["create-org", "--name", "acme", "--plan", "free"],
    );
    for field in ["orgId", "clientId", "clientSecret"] {
        assert!(created[field].is_string(), "{field}: {created}");
    }
    assert!(
        created["clientSecret"]
            .as_str()
            .unwrap()
            .starts_with("sk_live_")
    );
    let response = token(
        &server.base,
        created["clientId"].as_str().unwrap(),
        created["clientSecret"].as_str().unwrap(),
    )
    .await;
    assert_eq!(response.status(), 200);
    let scope = response.json::<Value>().await.unwrap()["scope"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        scope,
        "agents:read agents:write audit:read resources:read resources:write"
    );

    let org_id = created["orgId"].as_str().unwrap();
    let orgs = admin(dir.path(), &["list-orgs"]);
    assert_eq!(orgs.as_array().unwrap().len(), 2);
    let changed = admin(
        dir.path(),
        &["set-plan", "--org", org_id, "--plan", "enterprise"],
    );
    assert_eq!(changed["plan"], "enterprise");

    let reissued = admin(dir.path(), &["issue-bootstrap-credential", "--org", org_id]);
    let response = token(
        &server.base,
        reissued["clientId"].as_str().unwrap(),
        reissued["clientSecret"].as_str().unwrap(),
    )
    .await;
    assert_eq!(response.status(), 200);
}

/// Takes the resource scopes from every agent of the data directory's store and from its
/// credentials' copies, as a version before resources left them.
async fn as_before_resources(data_dir: &Path) {
    use agentidp_core::store::{AgentReader, Commit, CredentialReader, OrgReader, Write};
    let store =
        agentidp_store_sqlite::SqliteStore::open(&data_dir.join(agentidp_local::DATABASE_FILE))
            .unwrap();
    let old = |scopes: &[String]| -> Vec<String> {
        scopes
            .iter()
            .filter(|s| !s.starts_with("resources:"))
            .cloned()
            .collect()
    };
    for org in store.list_orgs().await.unwrap() {
        for agent in store.list_agents(org.org_id).await.unwrap() {
            let mut writes = Vec::new();
            for credential in store
                .list_credentials(org.org_id, agent.agent_id)
                .await
                .unwrap()
            {
                let mut older = credential.clone();
                older.agent_scopes = old(&credential.agent_scopes);
                older.version += 1;
                writes.push(Write::PutCredential {
                    credential: older,
                    expected_version: Some(credential.version),
                });
            }
            let mut older = agent.clone();
            older.scopes = old(&agent.scopes);
            older.version += 1;
            writes.push(Write::PutAgent {
                agent: older,
                expected_version: Some(agent.version),
            });
            store.commit(writes).await.unwrap();
        }
    }
}

#[tokio::test]
async fn migrate_gives_an_older_admin_the_resource_scopes_once_and_the_server_does_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let created = admin(dir.path(), &["create-org", "--name", "older"]);
    let (org_id, client_id, secret) = (
        created["orgId"].as_str().unwrap(),
        created["clientId"].as_str().unwrap(),
        created["clientSecret"].as_str().unwrap(),
    );
    as_before_resources(dir.path()).await;

    let changed = admin(dir.path(), &["migrate"]);
    assert_eq!(changed.as_array().unwrap().len(), 1, "{changed}");
    assert_eq!(changed[0]["orgId"], org_id);
    assert_eq!(changed[0]["name"], "bootstrap-admin");
    assert_eq!(
        changed[0]["addedScopes"],
        serde_json::json!(["resources:read", "resources:write"])
    );
    assert_eq!(admin(dir.path(), &["migrate"]), serde_json::json!([]));

    // The local server runs the same migration when it starts.
    as_before_resources(dir.path()).await;
    let server = start_server(dir.path());
    assert!(
        !dir.path().join("bootstrap.json").exists(),
        "an organization existed"
    );
    let response = token(&server.base, client_id, secret).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap()["scope"],
        "agents:read agents:write audit:read resources:read resources:write"
    );
    assert_eq!(admin(dir.path(), &["migrate"]), serde_json::json!([]));
}

#[test]
fn the_cli_refuses_an_unknown_plan_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_agentidp-admin"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["create-org", "--name", "x", "--plan", "platinum"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown plan"));
    assert!(!dir.path().join("agentidp.db").exists());
}

/// Every secret and token a full run handles, and the log it wrote at the most verbose level:
/// none of the former may appear in the latter.
#[tokio::test]
async fn no_secret_hash_or_token_reaches_the_log_of_a_full_run() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("server.log");
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_agentidp-local"))
        .args([
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--port",
            &port.to_string(),
        ])
        .env("AGENTIDP_BCRYPT_COST", "4")
        .env("AGENTIDP_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let mut server = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "agentidp-local did not start listening"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let http = reqwest::Client::new();
    let base = server.base.clone();
    let (admin_id, admin_secret) = bootstrap(dir.path());
    let mut handled: Vec<String> = vec![admin_secret.clone()];
    let admin_token = token(&base, &admin_id, &admin_secret)
        .await
        .json::<Value>()
        .await
        .unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    handled.push(admin_token.clone());
    let agent: Value = http
        .post(format!("{base}/api/v1/agents"))
        .bearer_auth(&admin_token)
        .json(&serde_json::json!({"name": "log-probe", "scopes": ["x:y"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let agent_id = agent["agentId"].as_str().unwrap();
    let credential: Value = http
        .post(format!("{base}/api/v1/agents/{agent_id}/credentials"))
        .bearer_auth(&admin_token)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (credential_id, client_id) = (
        credential["credentialId"].as_str().unwrap(),
        credential["clientId"].as_str().unwrap(),
    );
    handled.push(credential["clientSecret"].as_str().unwrap().to_owned());
    let agent_token = token(
        &base,
        client_id,
        credential["clientSecret"].as_str().unwrap(),
    )
    .await
    .json::<Value>()
    .await
    .unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    handled.push(agent_token.clone());
    // A wrong secret, by both methods, and a garbage bearer token.
    let wrong = "sk_live_ffffffffffffffffffffffffffffffff";
    handled.push(wrong.to_owned());
    token(&base, client_id, wrong).await;
    http.post(format!("{base}/api/v1/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("client_secret", wrong),
        ])
        .send()
        .await
        .unwrap();
    let rotated: Value = http
        .post(format!(
            "{base}/api/v1/agents/{agent_id}/credentials/{credential_id}/rotate"
        ))
        .bearer_auth(&admin_token)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    handled.push(rotated["clientSecret"].as_str().unwrap().to_owned());
    http.post(format!("{base}/api/v1/token/introspect"))
        .bearer_auth(&admin_token)
        .form(&[("token", agent_token.as_str())])
        .send()
        .await
        .unwrap();
    http.post(format!("{base}/api/v1/token/revoke"))
        .bearer_auth(&admin_token)
        .form(&[("token", agent_token.as_str())])
        .send()
        .await
        .unwrap();
    http.get(format!("{base}/api/v1/agents"))
        .bearer_auth(format!("{agent_token}x"))
        .send()
        .await
        .unwrap();
    let _ = server.child.kill();
    let _ = server.child.wait();

    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("request served"), "the log was captured");
    for value in &handled {
        assert!(
            !log.contains(value.as_str()),
            "a secret or token reached the log"
        );
        // A token's signature alone is as good as the token for spotting a leak.
        if let Some(signature) = value.rsplit('.').next().filter(|s| s.len() > 20) {
            assert!(
                !log.contains(signature),
                "a token signature reached the log"
            );
        }
    }
    assert!(!log.contains("$2b$"), "a bcrypt hash reached the log");
}
