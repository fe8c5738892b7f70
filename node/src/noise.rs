//! Gaussian noise, always through opendp's samplers (exact discrete Gaussians on a float grid,
//! resistant to floating-point attacks), never through a hand-written sampler.
//!
//! opendp's `Measurement` is not `Send`: each thread that adds noise builds its own measurement
//! of the same mechanism. A long vector is split across threads; every chunk gets noise of the
//! same scale, which is the same distribution as noising the vector whole, and the release is
//! accounted once, for the whole vector.

use opendp::domains::{AtomDomain, VectorDomain};
use opendp::measurements::make_gaussian;
use opendp::measures::ZeroConcentratedDivergence;
use opendp::metrics::L2Distance;

/// Noise could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("opendp refused the Gaussian mechanism: {0}")]
pub struct NoiseError(String);

type Gaussian = opendp::core::Measurement<
    VectorDomain<AtomDomain<f64>>,
    L2Distance<f64>,
    ZeroConcentratedDivergence,
    Vec<f64>,
>;

/// The noise grid: opendp rounds each value to a multiple of 2^K before adding exact discrete
/// Gaussian noise. 2^-40 (about 1e-12) is far below any value's meaning; it raises the L2
/// sensitivity by 2^-40 sqrt(size), which opendp's privacy map includes. The default grid (the
/// smallest subnormal) is about five times slower.
const K: i32 = -40;

fn measurement(scale: f64, size: usize) -> Result<Gaussian, NoiseError> {
    make_gaussian(
        VectorDomain::new(AtomDomain::<f64>::new_non_nan()).with_size(size),
        L2Distance::<f64>::default(),
        scale,
        Some(K),
    )
    .map_err(|e| NoiseError(format!("{e:?}")))
}

/// Below this many values, noise is drawn on the calling thread.
const PARALLEL_FROM: usize = 16_384;

/// The Gaussian mechanism for vectors of L2 sensitivity `sensitivity`, with noise standard
/// deviation `noise_multiplier * sensitivity`.
#[derive(Debug, Clone, Copy)]
pub struct GaussianNoise {
    pub sensitivity: f64,
    pub noise_multiplier: f64,
}

impl GaussianNoise {
    /// The noise standard deviation.
    pub fn scale(&self) -> f64 {
        self.noise_multiplier * self.sensitivity
    }

    /// The zCDP rho of one release of `size` values, as opendp's own privacy map states it
    /// (including the rounding to the noise grid).
    pub fn rho(&self, size: usize) -> Result<f64, NoiseError> {
        measurement(self.scale(), size)?
            .map(&self.sensitivity)
            .map_err(|e| NoiseError(format!("{e:?}")))
    }

    /// Adds noise to every value, in place.
    pub fn add(&self, values: &mut [f64]) -> Result<(), NoiseError> {
        let scale = self.scale();
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        if values.len() < PARALLEL_FROM || threads == 1 {
            return noise_chunk(scale, values);
        }
        let chunk = values.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let handles: Vec<_> = values
                .chunks_mut(chunk)
                .map(|c| scope.spawn(move || noise_chunk(scale, c)))
                .collect();
            handles.into_iter().try_for_each(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(NoiseError("a noise thread panicked".into())))
            })
        })
    }
}

/// The mechanism built once for vectors of one size, to invoke step after step on the thread
/// that built it (opendp's measurements are not `Send`).
pub struct Prepared {
    measurement: Gaussian,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Prepared")
    }
}

impl GaussianNoise {
    /// The mechanism for vectors of `size` values, built once.
    pub fn prepare(&self, size: usize) -> Result<Prepared, NoiseError> {
        Ok(Prepared {
            measurement: measurement(self.scale(), size)?,
        })
    }
}

impl Prepared {
    /// Adds noise to every value, in place (the vector must have the prepared size).
    pub fn add(&self, values: &mut [f64]) -> Result<(), NoiseError> {
        let noisy = self
            .measurement
            .invoke(&values.to_vec())
            .map_err(|e| NoiseError(format!("{e:?}")))?;
        values.copy_from_slice(&noisy);
        Ok(())
    }
}

/// Distributed DP: exact discrete Gaussian noise N_Z(0, scale²) on integers (a contribution in
/// the fixed point of secure aggregation), through opendp's integer mechanism. Each agency adds
/// its share; the privacy of the sum is `treaty_policies::privacy::zcdp::
/// distributed_discrete_gaussian_rho`'s, which opendp's own map (for one agency's noise alone)
/// does not state.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IntegerNoise {
    pub(crate) scale: f64,
}

impl IntegerNoise {
    /// Adds noise to every value, in place; a value beyond i64 after the noise saturates.
    pub(crate) fn add(&self, values: &mut [i64]) -> Result<(), NoiseError> {
        let noisy = make_gaussian::<_, _, ZeroConcentratedDivergence>(
            VectorDomain::new(AtomDomain::<i64>::default()).with_size(values.len()),
            L2Distance::<f64>::default(),
            self.scale,
            None,
        )
        .and_then(|m| m.invoke(&values.to_vec()))
        .map_err(|e| NoiseError(format!("{e:?}")))?;
        values.copy_from_slice(&noisy);
        Ok(())
    }
}

fn noise_chunk(scale: f64, values: &mut [f64]) -> Result<(), NoiseError> {
    let noisy = measurement(scale, values.len())?
        .invoke(&values.to_vec())
        .map_err(|e| NoiseError(e.to_string()))?;
    values.copy_from_slice(&noisy);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opendp_accounts_the_textbook_rho() {
        // A Gaussian mechanism with noise multiplier sigma is 1 / (2 sigma^2)-zCDP.
        for sigma in [0.5, 1.0, 4.0] {
            let g = GaussianNoise {
                sensitivity: 2.5,
                noise_multiplier: sigma,
            };
            let rho = g.rho(1000).unwrap();
            let textbook = 1.0 / (2.0 * sigma * sigma);
            // opendp adds the grid's rounding (2^-40 sqrt(1000)) to the sensitivity and rounds up.
            assert!(
                rho >= textbook && rho < textbook * (1.0 + 1e-9),
                "{rho} vs {textbook}"
            );
        }
    }

    /// The standard normal CDF.
    fn phi(x: f64) -> f64 {
        0.5 * libm::erfc(-x / std::f64::consts::SQRT_2)
    }

    #[test]
    fn integer_noise_is_a_discrete_gaussian_of_the_declared_scale() {
        // The frequencies of opendp's integer noise at scale 1.5 against the discrete Gaussian's
        // probabilities exp(-x² / 2σ²) / Σ_z exp(-z² / 2σ²) (Canonne, Kamath and Steinke 2020,
        // Definition 1): a chi-square test over -4..=4 and the two tails, 10 degrees of freedom,
        // whose critical value at significance 1e-6 is 46.9 (tables of the chi-square
        // distribution).
        let noise = IntegerNoise { scale: 1.5 };
        let n = 200_000;
        let mut values = vec![1_000_i64; n];
        noise.add(&mut values).unwrap();
        let weight = |x: i64| (-(x * x) as f64 / (2.0 * 1.5 * 1.5)).exp();
        let total: f64 = (-60..=60).map(weight).sum();
        let p = |x: i64| weight(x) / total;
        let mut observed = [0usize; 11];
        for v in &values {
            let x = v - 1_000;
            observed[match x {
                ..=-5 => 0,
                5.. => 10,
                x => (x + 5) as usize,
            }] += 1;
        }
        let tail: f64 = (5..=60).map(p).sum();
        let expected: Vec<f64> = std::iter::once(tail)
            .chain((-4..=4).map(p))
            .chain(std::iter::once(tail))
            .map(|q| q * n as f64)
            .collect();
        let chi2: f64 = observed
            .iter()
            .zip(&expected)
            .map(|(&o, &e)| (o as f64 - e).powi(2) / e)
            .sum();
        assert!(chi2 < 46.9, "chi-square {chi2}: {observed:?}");
        // Integers near the ends of i64 saturate rather than wrap.
        let mut edge = vec![i64::MAX; 100];
        IntegerNoise { scale: 1000.0 }.add(&mut edge).unwrap();
        assert!(edge.iter().all(|&v| v > i64::MAX - 100_000));
    }

    #[test]
    fn noise_has_the_declared_standard_deviation() {
        // Kolmogorov-Smirnov goodness of fit of the noise added to a fixed vector against
        // N(0, scale^2). With n = 100,000 the critical value at significance 1e-6 is
        // sqrt(-ln(1e-6 / 2) / (2 n)) = 0.00848 (the asymptotic Kolmogorov distribution), so this
        // test fails by chance once in a million runs.
        let g = GaussianNoise {
            sensitivity: 1.0,
            noise_multiplier: 3.0,
        };
        let n = 100_000;
        let base: Vec<f64> = (0..n).map(|i| (i % 17) as f64 - 8.0).collect();
        let mut noisy = base.clone();
        g.add(&mut noisy).unwrap();
        let mut z: Vec<f64> = noisy
            .iter()
            .zip(&base)
            .map(|(a, b)| (a - b) / g.scale())
            .collect();
        z.sort_by(f64::total_cmp);
        let d = z
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let f = phi(x);
                (f - i as f64 / n as f64)
                    .abs()
                    .max(((i + 1) as f64 / n as f64 - f).abs())
            })
            .fold(0.0, f64::max);
        let critical = ((-(1e-6f64 / 2.0).ln()) / (2.0 * n as f64)).sqrt();
        assert!(d < critical, "KS statistic {d} >= {critical}");
        // And the sample standard deviation is within 1 % of the declared one.
        let var = z.iter().map(|x| x * x).sum::<f64>() / n as f64;
        assert!((var.sqrt() - 1.0).abs() < 0.01, "{}", var.sqrt());
    }
}
