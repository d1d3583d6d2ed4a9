//! Bearer-token authentication on the real binary: missing or wrong tokens get UNAUTHENTICATED
//! with reason UNAUTHORIZED (and are logged without the secret); health and reflection stay
//! open; reflection lists our services.

use myagent_proto::v1 as pb;
use myagent_tests::control_plane::{control_plane, error_code, with_token};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

#[tokio::test]
async fn tokens_are_required_except_for_health_and_reflection() {
    let cp = control_plane()
        .tokens("alpha-token,beta-token")
        .spawn_binary()
        .await;
    let mut registry = cp.registry().await;

    let missing = registry
        .list_services(pb::ListServicesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::Unauthenticated);
    assert_eq!(error_code(&missing).0, "UNAUTHORIZED");

    let wrong = registry
        .list_services(with_token(
            pb::ListServicesRequest::default(),
            "wrong-guess-4711",
        ))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
    assert_eq!(error_code(&wrong).0, "UNAUTHORIZED");

    let mut rules = cp.rules().await;
    let e = rules
        .list_rules(pb::ListRulesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(error_code(&e).0, "UNAUTHORIZED");

    for token in ["alpha-token", "beta-token"] {
        registry
            .list_services(with_token(pb::ListServicesRequest::default(), token))
            .await
            .expect("a configured token is accepted");
    }

    // Health needs no token.
    let mut health = HealthClient::new(cp.channel().await);
    for service in ["", "myagent.v1.ServiceRegistry", "myagent.v1.RoutingRules"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health is open")
            .into_inner();
        assert_eq!(r.status, 1, "{service} is SERVING");
    }

    // Reflection needs no token and lists our services.
    let mut reflection = ServerReflectionClient::new(cp.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .expect("reflection is open")
        .into_inner();
    let response = stream.message().await.unwrap().expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response {response:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "myagent.v1.ServiceRegistry",
        "myagent.v1.RoutingRules",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.contains(&expected),
            "reflection lacks {expected}: {names:?}"
        );
    }

    // The error details our statuses carry resolve by reflection (a client such as grpcurl
    // decodes them that way).
    for symbol in ["google.rpc.ErrorInfo", "google.rpc.BadRequest"] {
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(symbol.into())),
        };
        let mut stream = reflection
            .server_reflection_info(futures::stream::iter([request]))
            .await
            .expect("reflection is open")
            .into_inner();
        let response = stream.message().await.unwrap().expect("one response");
        assert!(
            matches!(
                response.message_response,
                Some(MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()
            ),
            "{symbol}: {response:?}"
        );
    }

    // The rejected secret never reaches the logs, though the rejection does.
    let logs = cp.logs();
    assert!(
        logs.contains("rejected unauthenticated"),
        "rejections are logged:\n{logs}"
    );
    assert!(
        !logs.contains("wrong-guess-4711"),
        "a presented token was logged:\n{logs}"
    );
    assert!(
        !logs.contains("alpha-token"),
        "a configured token was logged:\n{logs}"
    );
    cp.shutdown().await;
}

#[tokio::test]
async fn token_file_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(&file, "# operators\nfile-token\n").unwrap();
    let cp = control_plane()
        .arg("--auth-token-file")
        .arg(file.display().to_string())
        .spawn()
        .await;
    let mut registry = cp.registry().await;
    registry
        .list_services(with_token(pb::ListServicesRequest::default(), "file-token"))
        .await
        .expect("token from the file is accepted");
    let e = registry
        .list_services(pb::ListServicesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(error_code(&e).0, "UNAUTHORIZED");
}

#[tokio::test]
async fn tls_listener_serves_grpc() {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig};
    let dir = tempfile::tempdir().unwrap();
    myagent_tests::tls::make_certs(dir.path());
    let cp = control_plane()
        .arg("--tls-cert")
        .arg(dir.path().join("server.pem").display().to_string())
        .arg("--tls-key")
        .arg(dir.path().join("server.key").display().to_string())
        .spawn()
        .await;
    let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
    let channel = Channel::from_shared(format!("https://{}", cp.grpc_addr))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .expect("TLS handshake with the control plane");
    let mut registry = pb::service_registry_client::ServiceRegistryClient::new(channel);
    registry
        .list_services(pb::ListServicesRequest::default())
        .await
        .expect("a call over TLS");
    // Plaintext clients cannot talk to a TLS listener.
    let plain = registry_plaintext(&cp.grpc_url()).await;
    assert!(plain.is_err(), "plaintext call to a TLS listener must fail");

    // The CLI over TLS: `https://` with the CA given, and without it (not trusted).
    let server = format!("https://localhost:{}", cp.grpc_addr.port());
    let ca = dir.path().join("ca.pem").display().to_string();
    let cli = |args: &[&str]| {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let server = server.clone();
        let dir = dir.path().to_path_buf();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            myagent_tests::cli::run_in(&dir, &server, &args)
        })
    };
    let trusted = cli(&["--control-plane-ca", &ca, "list", "--output", "json"])
        .await
        .unwrap();
    assert_eq!(trusted.code, Some(0), "{trusted}");
    assert!(trusted.stdout.contains("\"services\""), "{trusted}");
    let untrusted = cli(&["list"]).await.unwrap();
    assert_eq!(untrusted.code, Some(69), "{untrusted}");
    let missing = cli(&["--control-plane-ca", "/nonexistent/ca.pem", "list"])
        .await
        .unwrap();
    assert_ne!(missing.code, Some(0), "{missing}");
    assert!(missing.stderr.contains("--control-plane-ca"), "{missing}");
}

async fn registry_plaintext(url: &str) -> Result<(), tonic::Status> {
    let Ok(channel) = tonic::transport::Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
    else {
        return Err(tonic::Status::unavailable("connect failed"));
    };
    pb::service_registry_client::ServiceRegistryClient::new(channel)
        .list_services(pb::ListServicesRequest::default())
        .await
        .map(|_| ())
}

/// The gateway holds no tokens. Listening beyond loopback, it asks the control plane behind it
/// once, without a token, whether calls need one, and warns at start-up when they do not
/// (DESIGN §10); in front of a control plane that requires tokens it says so instead.
#[tokio::test]
async fn a_gateway_beyond_loopback_warns_when_the_control_plane_needs_no_token() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    // Real processes: this test blocks its thread reading the gateway's log.
    let open = control_plane().spawn_binary().await;
    let closed = control_plane().tokens("gw-secret").spawn_binary().await;
    let warning = "NO AUTHENTICATION";
    let fine = "the control plane requires a bearer token";
    for (cp, expect, absent) in [(&open, warning, fine), (&closed, fine, warning)] {
        let mut gw = Command::new(myagent_tests::bins::path(myagent_tests::bins::GATEWAY))
            .args(["--listen", "0.0.0.0:0", "--control-plane", &cp.grpc_url()])
            .env("MYAGENT_LOG_FORMAT", "text")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn myagent-gateway");
        let stderr = gw.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        let found = loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    let hit = line.contains(expect);
                    seen.push(line);
                    if hit {
                        break true;
                    }
                }
                Err(_) => break false,
            }
        };
        let _ = gw.kill();
        let _ = gw.wait();
        assert!(found, "no {expect:?} in the gateway's log: {seen:#?}");
        assert!(
            !seen
                .iter()
                .any(|l| l.contains(absent) || l.contains("gw-secret")),
            "{seen:#?}"
        );
    }
}
