//! Only certificates of the federation's CA, valid and not revoked, get in; identity comes only
//! from the certificate; an agency cannot use the operator API; and the coordinator keeps
//! serving everyone else through all of it.

use std::time::Duration;

use rcgen::{CertificateParams, KeyPair, SanType};
use time::OffsetDateTime;
use tonic::Code;
use treaty_proto::Identity;
use treaty_proto::pki::{self, Validity};
use treaty_proto::tls::ClientTls;
use treaty_proto::v1::ListAgenciesRequest;
use treaty_proto::v1::agency_service_client::AgencyServiceClient;
use treaty_proto::v1::operator_service_client::OperatorServiceClient;

use crate::common::*;

#[tokio::test]
async fn bad_certificates_are_refused_and_the_coordinator_keeps_serving() {
    let fx = Fixture::new(&[("DE-BKA", "DE"), ("NL-POLITIE", "NL"), ("FR-DOUANE", "FR")]);
    let (coordinator, address) = fx.start_coordinator("127.0.0.1:0");
    let ca = fx.pki.ca_cert();
    let de = Identity::agency("DE", "DE-BKA").unwrap();

    // A valid agency certificate gets an HTTP/2 answer.
    let (cert, key) = fx.pki.cert_and_key(&de);
    probe(&address, client_config(&ca, Some((&cert, &key))))
        .await
        .unwrap();

    // No client certificate.
    let refused = probe(&address, client_config(&ca, None)).await;
    assert!(refused.is_err(), "a client without a certificate got in");

    // A certificate for the same identity from another federation's CA.
    let other = Fixture::new(&[("DE-BKA", "DE")]);
    let (foreign_cert, foreign_key) = other.pki.cert_and_key(&de);
    assert!(
        probe(
            &address,
            client_config(&ca, Some((&foreign_cert, &foreign_key)))
        )
        .await
        .is_err()
    );

    // An expired certificate from the right CA.
    let now = OffsetDateTime::now_utc();
    let expired = Validity {
        not_before: now - time::Duration::days(10),
        not_after: now - time::Duration::days(1),
    };
    let expired = fx.site.issue(&de, "expired", expired).unwrap();
    let (expired_cert, expired_key) = (expired.cert, expired.key);
    assert!(
        probe(
            &address,
            client_config(&ca, Some((&expired_cert, &expired_key)))
        )
        .await
        .is_err()
    );

    // A self-signed certificate claiming an existing agency's SAN.
    let key_pair = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(de.to_string().try_into().unwrap())];
    let self_signed = params.self_signed(&key_pair).unwrap();
    let self_signed = fx
        .site
        .write_cert("self-signed", &self_signed.pem(), &key_pair.serialize_pem())
        .unwrap();
    let (ss_cert, ss_key) = (self_signed.cert, self_signed.key);
    assert!(
        probe(&address, client_config(&ca, Some((&ss_cert, &ss_key))))
            .await
            .is_err()
    );

    // A revoked certificate: accepted before, refused from the next connection on, no restart.
    let nl = Identity::agency("NL", "NL-POLITIE").unwrap();
    let (nl_cert, nl_key) = fx.pki.cert_and_key(&nl);
    probe(&address, client_config(&ca, Some((&nl_cert, &nl_key))))
        .await
        .unwrap();
    pki::revoke(&fx.pki, &nl_cert).unwrap();
    assert!(
        probe(&address, client_config(&ca, Some((&nl_cert, &nl_key))))
            .await
            .is_err()
    );

    // Each refusal is logged with its reason (the server logs it just after the client sees it).
    for reason in [
        "peer sent no certificates",
        "BadSignature",
        "certificate expired",
        "UnknownIssuer",
        "Revoked",
    ] {
        coordinator.wait_for_log(reason, Duration::from_secs(10));
    }

    // An agency certificate cannot call the operator API, and an operator cannot act as an agency.
    let agency_tls = ClientTls::new(&fx.files(&de)).unwrap();
    let channel = agency_tls
        .connect(&address, Duration::from_secs(5))
        .await
        .unwrap();
    let denied = OperatorServiceClient::new(channel)
        .list_agencies(ListAgenciesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(
        denied.message().contains("treaty://agency/DE/DE-BKA"),
        "{}",
        denied.message()
    );
    let operator_tls = ClientTls::new(&fx.files(&Identity::operator("op").unwrap())).unwrap();
    let channel = operator_tls
        .connect(&address, Duration::from_secs(5))
        .await
        .unwrap();
    let denied = AgencyServiceClient::new(channel)
        .download_model(treaty_proto::v1::DownloadModelRequest::default())
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");

    // Through all of that the coordinator kept serving: valid agencies join and train.
    let _de = fx.start_node("DE-BKA", "DE", &address, 5);
    let _fr = fx.start_node("FR-DOUANE", "FR", &address, 6);
    let mut op = fx.operator(&address).await;
    wait_connected(&mut op, &["DE-BKA", "FR-DOUANE"]).await;
    create_federation(&mut op, "after", &["DE-BKA:DE", "FR-DOUANE:FR"]).await;
    let job = run_training(&mut op, "after", 1, 2).await;
    assert_eq!(job.rounds[0].contributors.len(), 2);
}

#[tokio::test]
async fn a_revoked_node_cannot_join() {
    let fx = Fixture::new(&[("DE-BKA", "DE")]);
    let (cert, _) = fx
        .pki
        .cert_and_key(&Identity::agency("DE", "DE-BKA").unwrap());
    pki::revoke(&fx.pki, &cert).unwrap();
    let (_coordinator, address) = fx.start_coordinator("127.0.0.1:0");
    let node = fx.start_node("DE-BKA", "DE", &address, 7);
    let mut op = fx.operator(&address).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let connected = op
        .list_agencies(ListAgenciesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .agencies;
    assert!(connected.is_empty(), "{connected:?}");
    // The node keeps trying, and says why it cannot get in.
    node.wait_for_log("cannot hold a session", Duration::from_secs(10));
}

#[tokio::test]
async fn revoking_a_connected_agency_closes_its_session() {
    let fx = Fixture::new(&[("DE-BKA", "DE"), ("NL-POLITIE", "NL")]);
    let (coordinator, address) = fx.start_coordinator("127.0.0.1:0");
    let _de = fx.start_node("DE-BKA", "DE", &address, 8);
    let _nl = fx.start_node("NL-POLITIE", "NL", &address, 9);
    let mut op = fx.operator(&address).await;
    wait_connected(&mut op, &["DE-BKA", "NL-POLITIE"]).await;

    let (nl_cert, _) = fx
        .pki
        .cert_and_key(&Identity::agency("NL", "NL-POLITIE").unwrap());
    pki::revoke(&fx.pki, &nl_cert).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let connected: Vec<String> = op
            .list_agencies(ListAgenciesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .agencies
            .into_iter()
            .map(|a| a.agency)
            .collect();
        if connected == vec!["DE-BKA".to_owned()] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still connected: {connected:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        coordinator
            .log()
            .contains("certificate revoked; session closed"),
        "{}",
        coordinator.log()
    );
    // The other agency goes on working alone.
    create_federation(&mut op, "de-only", &["DE-BKA:DE"]).await;
    let job = run_training(&mut op, "de-only", 1, 1).await;
    assert_eq!(job.rounds[0].contributors, vec!["DE-BKA".to_owned()]);
}
