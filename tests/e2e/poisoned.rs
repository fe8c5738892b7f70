//! Poisoned analytics (issue #9): a hostile agency, speaking the real wire protocol with a real
//! certificate, answers a COUNT with absurd, non-finite or merely outlying values. The absurd
//! and the non-finite are rejected and named; the federation's answer stays the honest agencies';
//! the outlying one is flagged, and a median combination is not carried away by it.

use std::time::Duration;

use treaty_proto::Identity;
use treaty_proto::v1::{Combine, Job, QueryKind, QuerySpec};

use crate::common::*;
use crate::hostile_agency::{self, Session};

type Operator =
    treaty_proto::v1::operator_service_client::OperatorServiceClient<tonic::transport::Channel>;

/// Runs a COUNT in federation `four`; the hostile agency answers `value`, declaring
/// `scale` as its noise's scale. Returns the job as it ended.
async fn count_with(
    op: &mut Operator,
    hostile: &mut Session,
    client: &mut treaty_proto::v1::agency_service_client::AgencyServiceClient<
        tonic::transport::Channel,
    >,
    combine: Combine,
    value: f64,
    scale: f64,
) -> Job {
    let job = start_query(
        op,
        "four",
        QuerySpec {
            kind: QueryKind::Count as i32,
            epsilon: 1.0,
            combine: combine as i32,
            ..Default::default()
        },
        3,
    )
    .await;
    let task = hostile
        .next_task(Duration::from_secs(20))
        .await
        .expect("the hostile agency got no task");
    // The upload itself may be refused (a non-finite value is, on arrival); either way the
    // round goes on without it.
    let _ = hostile_agency::submit(
        client,
        &task.task_id,
        vec![value],
        &[("laplace_scale", scale)],
    )
    .await;
    succeeded(watch_to_end(op, &job.job_id).await)
}

#[tokio::test]
async fn absurd_answers_are_rejected_and_outlying_ones_flagged() {
    let honest = [("DE-BKA", "DE"), ("NL-POLITIE", "NL"), ("FR-DOUANE", "FR")];
    let fx = Fixture::new(&[
        ("DE-BKA", "DE"),
        ("NL-POLITIE", "NL"),
        ("FR-DOUANE", "FR"),
        ("PL-POLICJA", "PL"),
    ]);
    let (coordinator, address) = fx.start_coordinator("127.0.0.1:0");
    // Each honest node holds 400 training records (`write_data`): the count is 1,200.
    let _nodes: Vec<Proc> = honest
        .iter()
        .enumerate()
        .map(|(i, (a, c))| fx.start_node(a, c, &address, 40 + i as u64))
        .collect();
    let mut client = hostile_agency::client(
        &address,
        &fx.files(&Identity::agency("PL", "PL-POLICJA").unwrap()),
    )
    .await;
    let mut hostile = hostile_agency::open(&mut client, hostile_agency::hello())
        .await
        .unwrap();
    let mut op = fx.operator(&address).await;
    wait_connected(
        &mut op,
        &["DE-BKA", "NL-POLITIE", "FR-DOUANE", "PL-POLICJA"],
    )
    .await;
    create_federation(
        &mut op,
        "four",
        &[
            "DE-BKA:DE",
            "NL-POLITIE:NL",
            "FR-DOUANE:FR",
            "PL-POLICJA:PL",
        ],
    )
    .await;
    let honest_ids: Vec<String> = honest.iter().map(|(a, _)| a.to_string()).collect();
    // Three honest Laplace(1) noises: standard deviation sqrt(6) = 2.45; 60 is far outside.
    let near = |v: f64, truth: f64| (v - truth).abs() < 60.0;

    // 3.2e250 with the right scale; NaN; a plausible value with a scale that would widen its
    // allowance past anything. Each is rejected, named with its reason, and left out.
    for (value, scale, why) in [
        (3.2e250, 1.0, "outside what the query allows"),
        (f64::NAN, 1.0, "holds a non-finite value"),
        (2_000.0, 1e300, "declares a Laplace scale of 1e300"),
    ] {
        let job = count_with(
            &mut op,
            &mut hostile,
            &mut client,
            Combine::Unspecified,
            value,
            scale,
        )
        .await;
        let round = &job.rounds[0];
        assert_eq!(round.contributors, honest_ids, "{value}");
        let rejected: Vec<_> = round
            .excluded
            .iter()
            .filter(|e| e.agency == "PL-POLICJA")
            .collect();
        assert_eq!(rejected.len(), 1, "{:?}", round.excluded);
        assert_eq!(rejected[0].reason_code, "INVALID_UPDATE");
        assert!(rejected[0].message.contains(why), "{}", rejected[0].message);
        assert!(near(round.values[0], 1200.0), "{value}: {:?}", round.values);
    }
    // Logged with the agency's identity.
    coordinator.wait_for_log("update rejected", Duration::from_secs(5));
    let rejections: Vec<String> = coordinator
        .log()
        .lines()
        .filter(|l| l.contains("update rejected"))
        .map(str::to_owned)
        .collect();
    assert_eq!(rejections.len(), 3, "{rejections:#?}");
    assert!(
        rejections
            .iter()
            .all(|l| l.contains("treaty://agency/PL/PL-POLICJA")),
        "{rejections:#?}"
    );

    // 50,000: within what one agency may hold, so accepted; but 20,000 robust standard
    // deviations from the others, so flagged. Summed, it is in the answer (what the bounds
    // cannot stop); by the median, the answer is four times a typical agency's, 1,600.
    let summed = count_with(
        &mut op,
        &mut hostile,
        &mut client,
        Combine::Sum,
        50_000.0,
        1.0,
    )
    .await;
    let round = &summed.rounds[0];
    assert_eq!(round.contributors.len(), 4);
    assert!(near(round.values[0], 51_200.0), "{:?}", round.values);
    assert_eq!(
        round.outliers[0].agency, "PL-POLICJA",
        "{:?}",
        round.outliers
    );
    assert_eq!(round.outliers[0].label, "count");
    assert!(round.outliers[0].score > 1_000.0, "{:?}", round.outliers);

    let median = count_with(
        &mut op,
        &mut hostile,
        &mut client,
        Combine::Median,
        50_000.0,
        1.0,
    )
    .await;
    let round = &median.rounds[0];
    assert!(near(round.values[0], 1_600.0), "{:?}", round.values);
    let v = &round.answer[0];
    assert!(v.ci_low < v.value && v.value < v.ci_high, "{v:?}");
    assert_eq!(round.outliers[0].agency, "PL-POLICJA");

    // `treaty job show` names the rejected agency and the flagged one.
    let config = fx.operator_config(&address);
    let show = |job: &str| {
        let out = std::process::Command::new(TREATY)
            .args([
                "job",
                "show",
                "--config",
                config.to_str().unwrap(),
                "--job",
                job,
            ])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = show("job-000001");
    assert!(
        text.contains("PL-POLICJA excluded: INVALID_UPDATE"),
        "{text}"
    );
    let text = show(&median.job_id);
    assert!(
        text.contains("PL-POLICJA flagged as an outlier: `count` answered 50000"),
        "{text}"
    );
}
