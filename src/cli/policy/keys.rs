//! `treaty policy keygen`, `sign` and `verify`: countries' signing keys and signed policies.

use std::path::{Path, PathBuf};

use treaty_policies::{
    Policy, TrustedKeys, country_of_key, load_private_key, looks_like_policy_of, sign_file,
    verify_file, write_key_pair,
};

use super::{Code, attempt, registry_or_2, unusable};
use treaty_devkit::{errln, outln};

pub(super) fn keygen(out: &Path, country: &str) -> Code {
    if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
        return unusable(format!(
            "`{country}` is not an ISO 3166-1 alpha-2 code (two capital letters, e.g. DE)"
        ));
    }
    match write_key_pair(out, country) {
        Ok((private, public)) => {
            outln!(
                "{}: {country}'s private key (mode 0600): keep it secret, with the legal team that signs",
                private.display()
            );
            outln!(
                "{}: {country}'s public key: give it to the federation secretariat for the key directory",
                public.display()
            );
            0
        }
        Err(e) => {
            errln!("error: {e}");
            1
        }
    }
}

pub(super) fn sign_cmd(key: &Path, registry: Option<&Path>, files: &[PathBuf]) -> Code {
    attempt(|| {
        let pair = load_private_key(key).map_err(unusable)?;
        let registry = registry.map(registry_or_2).transpose()?;
        let key_country = country_of_key(key);
        let check = |country: &str, text: &str| match &registry {
            None => looks_like_policy_of(country, text),
            Some(r) => Policy::parse(country, text, r, Some(country))
                .map(|_| ())
                .map_err(|e| {
                    let n = e.diagnostics().len();
                    format!(
                        "{n} problem{} (`treaty policy check` lists them)",
                        if n == 1 { "" } else { "s" }
                    )
                }),
        };
        let mut refused = 0;
        for path in files {
            match sign_file(&pair, key_country.as_deref(), path, check) {
                Ok(sig) => outln!("{}: signed ({})", path.display(), sig.display()),
                Err(e) => {
                    outln!("{}: not signed: {e}", path.display());
                    refused += 1;
                }
            }
        }
        Ok(if refused > 0 { 1 } else { 0 })
    })
}

pub(super) fn verify_cmd(keys: &Path, files: &[PathBuf]) -> Code {
    attempt(|| {
        let keys = TrustedKeys::load(keys).map_err(unusable)?;
        let mut bad = 0;
        for path in files {
            match verify_file(&keys, path) {
                Ok(country) => outln!(
                    "{}: signature valid ({country}'s registered key)",
                    path.display()
                ),
                Err(e) => {
                    outln!("{}: {e}", path.display());
                    bad += 1;
                }
            }
        }
        Ok(if bad > 0 { 1 } else { 0 })
    })
}
