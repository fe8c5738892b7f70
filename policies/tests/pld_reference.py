"""Reference values for Treaty's PLD accountant, from an independent implementation.

Google's dp_accounting (PyPI `dp-accounting`, version 0.6.0), PLDAccountant with the
add-or-remove-one neighbouring relation and its default pessimistic discretisation (value
discretisation interval 1e-4): epsilon of `steps` Poisson-subsampled Gaussian steps (sampling
rate q, noise multiplier sigma) at `delta`, on a grid of 96 cases.

    pip install dp-accounting==0.6.0 && python3 policies/tests/pld_reference.py

The output is pasted into `policies/tests/accountants.rs` (`DP_ACCOUNTING_PLD` and
`EXACT_GAUSSIAN`).
"""
import math

from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from scipy import optimize, special

# The grid of issue #15: every sampling rate, noise multiplier, number of steps and delta below.
CASES = [
    (q, sigma, steps, delta)
    for q in (0.001, 0.01, 0.1, 1.0)
    for sigma in (0.8, 1.0, 2.0, 4.0)
    for steps in (100, 1000, 10000)
    for delta in (1e-5, 1e-6)
]

for q, sigma, steps, delta in CASES:
    accountant = pld_privacy_accountant.PLDAccountant()
    event = dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma))
    accountant.compose(dp_event.SelfComposedDpEvent(event, steps))
    print(f"    ({q}, {sigma}, {steps}, {delta:e}, {accountant.get_epsilon(delta)!r}),", flush=True)

# Sampling everyone (q = 1), the steps compose into one Gaussian of mu = sqrt(steps) / sigma,
# whose exact curve (Balle and Wang 2018) Treaty evaluates in closed form, without a grid:
# its epsilon by root finding on that curve, computed in logarithms (scipy's log_ndtr) so that
# e^epsilon may exceed the floating-point range.

print("exact Gaussian (q = 1):")
for q, sigma, steps, delta in CASES:
    if q != 1.0:
        continue
    mu = math.sqrt(steps) / sigma
    curve = lambda e: special.ndtr(-e / mu + mu / 2) - math.exp(e + special.log_ndtr(-e / mu - mu / 2))
    exact = optimize.brentq(lambda e: curve(e) - delta, 0.0, mu * mu + 50 * mu, xtol=1e-13, rtol=1e-14)
    print(f"    ({sigma}, {steps}, {delta:e}, {exact!r}),", flush=True)
