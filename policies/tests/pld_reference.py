"""Reference values for Treaty's PLD accountant, from an independent implementation.

Google's dp_accounting (PyPI `dp-accounting`, version 0.6.0), PLDAccountant with the
add-or-remove-one neighbouring relation and its default pessimistic discretisation (value
discretisation interval 1e-4): epsilon of `steps` Poisson-subsampled Gaussian steps (sampling
rate q, noise multiplier sigma) at `delta`.

    pip install dp-accounting==0.6.0 && python3 policies/tests/pld_reference.py

The output is pasted into `policies/tests/accountants.rs`.
"""
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant

CASES = [
    # (q, sigma, steps, delta)
    (0.001, 1.0, 100, 1e-5),  # the example: RDP 0.64 against PLD 0.055
    (0.01, 4.0, 10000, 1e-5),
    (0.01, 1.1, 1000, 1e-5),
    (0.004, 1.0, 5000, 1e-6),
    (0.02, 0.8, 500, 1e-5),
    (0.1, 2.0, 100, 1e-5),
    (0.05, 1.5, 2000, 1e-6),
    (0.256, 3.0, 80, 1e-5),
    (1.0, 5.0, 20, 1e-5),
    (1.0, 20.0, 100, 1e-6),
    (0.0032, 1.3, 3130, 1e-5),
    (0.1, 1.0, 200, 1e-5),
]

for q, sigma, steps, delta in CASES:
    accountant = pld_privacy_accountant.PLDAccountant()
    event = dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma))
    accountant.compose(dp_event.SelfComposedDpEvent(event, steps))
    print(f"    ({q}, {sigma}, {steps}, {delta:e}, {accountant.get_epsilon(delta)!r}),", flush=True)
