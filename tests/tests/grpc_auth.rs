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
