//! `treaty synth`: realistic synthetic customs declarations for a federation of agencies.
//!
//! Every agency's declarations come from one known ground truth — a logistic model of the
//! probability that a shipment is seized — but each agency sees different trade: its own mix of
//! transport modes, origins, routes and goods (non-IID), and so its own prevalence of seizures
//! (between 1 % and 15 %). Some cells are empty (the schema says how to fill them) and some
//! origins are outside the schema's vocabulary (they fall in the "other" bucket). Written: the
//! schema, a train and a test split per agency, and the ground truth.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use treaty_proto::schema;
use treaty_proto::v1::{
    ColumnKind, ColumnSpec, FeatureSchema, LabelKind, LabelSpec, MissingRule, Transform,
};

/// HS chapters of the goods declared, with their weight in the ground truth.
const HS_CHAPTERS: [(&str, f64); 10] = [
    ("08", 0.9),  // fruit: bananas and pineapples hide cocaine
    ("09", 0.6),  // coffee, tea, spices
    ("12", 0.3),  // seeds
    ("21", 0.2),  // food preparations
    ("39", -0.2), // plastics
    ("44", 0.1),  // wood
    ("61", -0.1), // apparel
    ("84", -0.6), // machinery
    ("85", -0.3), // electronics
    ("87", 0.2),  // vehicles
];
/// Origins in the schema's vocabulary, with their weight; a few declarations name others.
const ORIGINS: [(&str, f64); 10] = [
    ("CO", 1.5),
    ("EC", 1.4),
    ("PE", 1.0),
    ("BR", 0.8),
    ("MA", 0.7),
    ("NG", 0.6),
    ("TR", 0.2),
    ("CN", -0.4),
    ("US", -0.8),
    ("IN", -0.3),
];
const OTHER_ORIGINS: [&str; 3] = ["PA", "DO", "GH"];
const MODES: [(&str, f64); 4] = [("sea", 0.5), ("air", 0.3), ("road", -0.2), ("rail", -0.5)];
const ROUTES: [(&str, f64); 4] = [
    ("direct", -0.4),
    ("transshipment_caribbean", 1.2),
    ("transshipment_west_africa", 0.9),
    ("eu_hub", 0.0),
];
/// The intercept and the weights of the numeric and boolean features.
const INTERCEPT: f64 = -3.5;
const W_LOG_VALUE_PER_KG: f64 = -0.35;
const W_SHIPPER_YEARS: f64 = -0.08;
const W_PRIOR_SEIZURES: f64 = 0.45;
const W_NEW_DECLARANT: f64 = 0.9;
const W_DOCUMENT_MISMATCH: f64 = 1.3;
const W_CONTAINER: f64 = 0.3;

/// The default agencies: (id, country).
pub const DEFAULT_AGENCIES: [(&str, &str); 8] = [
    ("NL-DOUANE", "NL"),
    ("BE-DOUANE", "BE"),
    ("DE-ZOLL", "DE"),
    ("FR-DGDDI", "FR"),
    ("ES-AEAT", "ES"),
    ("IT-ADM", "IT"),
    ("PL-KAS", "PL"),
    ("AT-ZOLL", "AT"),
];

/// The schema of the declarations: what the federation agrees its models read.
pub fn schema() -> FeatureSchema {
    let words = |v: &[(&str, f64)]| v.iter().map(|(w, _)| (*w).to_owned()).collect();
    let numeric = |name: &str, upper: f64, transform: Transform, missing: MissingRule| ColumnSpec {
        name: name.to_owned(),
        kind: ColumnKind::Numeric as i32,
        lower: Some(0.0),
        upper: Some(upper),
        transform: transform as i32,
        values: vec![],
        missing: missing as i32,
    };
    let categorical = |name: &str, values: Vec<String>, missing: MissingRule| ColumnSpec {
        name: name.to_owned(),
        kind: ColumnKind::Categorical as i32,
        values,
        missing: missing as i32,
        ..Default::default()
    };
    let boolean = |name: &str, missing: MissingRule| ColumnSpec {
        name: name.to_owned(),
        kind: ColumnKind::Boolean as i32,
        missing: missing as i32,
        ..Default::default()
    };
    use MissingRule::{Mean, Other, Reject, Zero};
    FeatureSchema {
        label: Some(LabelSpec {
            name: "seized".into(),
            kind: LabelKind::Binary as i32,
            classes: vec![],
        }),
        columns: vec![
            numeric("declared_value_eur", 1e7, Transform::Log1p, Reject),
            numeric("gross_weight_kg", 1e6, Transform::Log1p, Reject),
            categorical("hs_chapter", words(&HS_CHAPTERS), Reject),
            categorical("origin", words(&ORIGINS), Other),
            categorical("transport_mode", words(&MODES), Reject),
            categorical("route", words(&ROUTES), Reject),
            numeric("shipper_history_years", 50.0, Transform::Unspecified, Mean),
            numeric("prior_seizures", 20.0, Transform::Unspecified, Zero),
            boolean("new_declarant", Reject),
            boolean("document_mismatch", Reject),
            boolean("containerised", Zero),
        ],
    }
}

fn normal(rng: &mut StdRng) -> f64 {
    // Box–Muller: two uniforms on (0, 1] give one standard normal.
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Draws an index from unnormalised weights.
fn pick(rng: &mut StdRng, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut u = rng.random::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        if u < *w {
            return i;
        }
        u -= w;
    }
    weights.len() - 1
}

/// One agency's trade: how often it sees each mode, origin, route and chapter.
struct Profile {
    modes: Vec<f64>,
    origins: Vec<f64>,
    routes: Vec<f64>,
    chapters: Vec<f64>,
    /// How much riskier than average its shippers are (shifts history and prior seizures).
    risk: f64,
}

fn profile(rng: &mut StdRng, index: usize) -> Profile {
    // Ports, airports and land borders: each agency leans to one mode.
    let mut modes = vec![1.0, 0.4, 0.8, 0.2];
    modes[index % 4] += 4.0;
    let mut origins: Vec<f64> = (0..ORIGINS.len())
        .map(|_| 0.2 + rng.random::<f64>())
        .collect();
    // Agencies facing the Atlantic see more of the risky Latin-American trade.
    let risk = (index % 3) as f64 * 0.8;
    for w in origins.iter_mut().take(4) {
        *w *= 0.3 + risk;
    }
    let routes: Vec<f64> = (0..ROUTES.len())
        .map(|i| {
            if i == 0 || i == 3 {
                2.0
            } else {
                0.15 + 0.5 * risk * rng.random::<f64>()
            }
        })
        .collect();
    let chapters: Vec<f64> = (0..HS_CHAPTERS.len())
        .map(|_| 0.3 + rng.random::<f64>())
        .collect();
    Profile {
        modes,
        origins,
        routes,
        chapters,
        risk,
    }
}

/// One declaration: its CSV cells and its probability of seizure under the ground truth.
fn declaration(rng: &mut StdRng, p: &Profile) -> (Vec<String>, f64) {
    let mode = pick(rng, &p.modes);
    let chapter = pick(rng, &p.chapters);
    let route = pick(rng, &p.routes);
    let origin_index = pick(rng, &p.origins);
    let unseen_origin = rng.random::<f64>() < 0.02;
    let missing_origin = rng.random::<f64>() < 0.01;
    let weight = (match mode {
        0 => 9.0,
        1 => 4.0,
        2 => 8.0,
        _ => 9.5,
    } + 1.2 * normal(rng))
    .exp();
    let value_per_kg = (1.5 + 1.0 * normal(rng) + HS_CHAPTERS[chapter].1 * -0.5).exp();
    let value = weight * value_per_kg;
    let years = (8.0 - 3.0 * p.risk + 5.0 * normal(rng)).clamp(0.0, 50.0);
    let prior = ((0.3 + 0.4 * p.risk) * normal(rng).abs() * 2.0)
        .floor()
        .min(20.0);
    let new_declarant = rng.random::<f64>() < 0.1 + 0.1 * p.risk;
    let mismatch = rng.random::<f64>() < 0.05;
    let container = mode == 0 || (mode == 3 && rng.random::<f64>() < 0.5);

    let origin_weight = if unseen_origin || missing_origin {
        0.5
    } else {
        ORIGINS[origin_index].1
    };
    let z = INTERCEPT
        + W_LOG_VALUE_PER_KG * value_per_kg.ln()
        + HS_CHAPTERS[chapter].1
        + origin_weight
        + MODES[mode].1
        + ROUTES[route].1
        + W_SHIPPER_YEARS * years
        + W_PRIOR_SEIZURES * prior
        + W_NEW_DECLARANT * f64::from(u8::from(new_declarant))
        + W_DOCUMENT_MISMATCH * f64::from(u8::from(mismatch))
        + W_CONTAINER * f64::from(u8::from(container));
    let probability = 1.0 / (1.0 + (-z).exp());

    let origin = if missing_origin {
        String::new()
    } else if unseen_origin {
        OTHER_ORIGINS[rng.random_range(0..OTHER_ORIGINS.len())].to_owned()
    } else {
        ORIGINS[origin_index].0.to_owned()
    };
    let cells = vec![
        format!("{value:.2}"),
        format!("{weight:.1}"),
        HS_CHAPTERS[chapter].0.to_owned(),
        origin,
        MODES[mode].0.to_owned(),
        ROUTES[route].0.to_owned(),
        if rng.random::<f64>() < 0.03 {
            String::new()
        } else {
            format!("{years:.1}")
        },
        if rng.random::<f64>() < 0.05 {
            String::new()
        } else {
            format!("{prior}")
        },
        new_declarant.to_string(),
        mismatch.to_string(),
        if rng.random::<f64>() < 0.02 {
            String::new()
        } else {
            container.to_string()
        },
    ];
    (cells, probability)
}

const HEADER: &str = "declared_value_eur,gross_weight_kg,hs_chapter,origin,transport_mode,route,shipper_history_years,prior_seizures,new_declarant,document_mismatch,containerised,seized";

/// What `generate` wrote for one agency.
#[derive(Debug, Clone)]
pub struct AgencyData {
    pub agency: String,
    pub country: String,
    pub train: PathBuf,
    pub test: PathBuf,
    /// The share of its declarations that were seized.
    pub prevalence: f64,
}

/// What `generate` wrote.
#[derive(Debug, Clone)]
pub struct Synth {
    pub agencies: Vec<AgencyData>,
    /// The ROC AUC of the ground truth's own probabilities on the union of the test splits: the
    /// best any model can do on this data, for reference.
    pub truth_test_auc: f64,
}

/// Writes `schema.toml`, `<agency>_train.csv` and `<agency>_test.csv` (80/20) for each agency,
/// and `truth.json`. Deterministic for a seed.
pub fn generate(
    dir: &Path,
    agencies: &[(String, String)],
    rows: usize,
    seed: u64,
) -> anyhow::Result<Synth> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
    let text = schema::to_toml(&schema())?;
    let text = format!(
        "# Synthetic customs declarations (treaty synth): the federation's feature schema.\n\n{text}"
    );
    std::fs::write(dir.join("schema.toml"), text)
        .with_context(|| format!("cannot write into `{}`", dir.display()))?;
    let mut out = Vec::new();
    let (mut test_probabilities, mut test_labels) = (Vec::new(), Vec::new());
    for (index, (agency, country)) in agencies.iter().enumerate() {
        let mut rng =
            StdRng::seed_from_u64(seed ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let p = profile(&mut rng, index);
        let train_rows = rows - rows / 5;
        let mut seized = 0usize;
        let mut paths = Vec::new();
        for (split, n) in [("train", train_rows), ("test", rows / 5)] {
            let path = dir.join(format!("{agency}_{split}.csv"));
            let file = std::fs::File::create(&path)
                .with_context(|| format!("cannot write `{}`", path.display()))?;
            let mut w = std::io::BufWriter::new(file);
            writeln!(w, "{HEADER}")?;
            for _ in 0..n {
                let (cells, probability) = declaration(&mut rng, &p);
                let y = u8::from(rng.random::<f64>() < probability);
                seized += usize::from(y);
                if split == "test" {
                    test_probabilities.push(probability);
                    test_labels.push(f64::from(y));
                }
                writeln!(w, "{},{y}", cells.join(","))?;
            }
            w.flush()?;
            paths.push(path);
        }
        out.push(AgencyData {
            agency: agency.clone(),
            country: country.clone(),
            train: paths[0].clone(),
            test: paths[1].clone(),
            prevalence: seized as f64 / rows.max(1) as f64,
        });
    }
    let truth_test_auc = treaty_node::roc_auc(
        ndarray::ArrayView1::from(&test_probabilities),
        ndarray::ArrayView1::from(&test_labels),
    )
    .unwrap_or(f64::NAN);
    let truth = serde_json::json!({
        "model": "P(seized) = sigmoid(intercept + sum of the weights below)",
        "intercept": INTERCEPT,
        "log_value_per_kg": W_LOG_VALUE_PER_KG,
        "shipper_history_years": W_SHIPPER_YEARS,
        "prior_seizures": W_PRIOR_SEIZURES,
        "new_declarant": W_NEW_DECLARANT,
        "document_mismatch": W_DOCUMENT_MISMATCH,
        "containerised": W_CONTAINER,
        "hs_chapter": HS_CHAPTERS.iter().map(|(k, v)| (k.to_string(), *v)).collect::<std::collections::BTreeMap<_, _>>(),
        "origin": ORIGINS.iter().map(|(k, v)| (k.to_string(), *v)).collect::<std::collections::BTreeMap<_, _>>(),
        "transport_mode": MODES.iter().map(|(k, v)| (k.to_string(), *v)).collect::<std::collections::BTreeMap<_, _>>(),
        "route": ROUTES.iter().map(|(k, v)| (k.to_string(), *v)).collect::<std::collections::BTreeMap<_, _>>(),
        "seed": seed,
        "truth_test_auc": truth_test_auc,
        "agencies": out.iter().map(|a| serde_json::json!({"agency": a.agency, "country": a.country, "prevalence": a.prevalence})).collect::<Vec<_>>(),
    });
    std::fs::write(
        dir.join("truth.json"),
        serde_json::to_string_pretty(&truth)?,
    )?;
    Ok(Synth {
        agencies: out,
        truth_test_auc,
    })
}

/// The agencies `treaty synth --agencies N` writes: the defaults, then `XX-AGENCY-<k>` of
/// made-up countries.
pub fn agencies(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| match DEFAULT_AGENCIES.get(i) {
            Some((a, c)) => (a.to_string(), c.to_string()),
            None => {
                let country = format!(
                    "{}{}",
                    (b'A' + (i / 26 % 26) as u8) as char,
                    (b'A' + (i % 26) as u8) as char
                );
                (format!("{country}-AGENCY-{i}"), country)
            }
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_passes_its_checks_and_reads_back_from_its_file() {
        let schema = schema();
        assert!(
            schema::problems(&schema).is_empty(),
            "{:?}",
            schema::problems(&schema)
        );
        let text = schema::to_toml(&schema).unwrap();
        assert_eq!(schema::parse(&text).unwrap().unwrap(), schema);
    }
}
