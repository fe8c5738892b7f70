#!/usr/bin/env bash
# Checks a Treaty audit bundle (`treaty audit export`) with standard tools only — bash, grep,
# sed, cmp, sha256sum and openssl — by the rules of docs/AUDIT.md, without Treaty:
#   bash docs/verify-audit-bundle.sh DIR TRUSTED_CA.crt [TRUSTED_CRL.pem]
# TRUSTED_CA.crt is the federation CA's certificate from your own copy, never the bundle's;
# TRUSTED_CRL.pem, when given, the federation's revocation list (the signer must not be on it).
# Exit 0 when the bundle verifies; 1 naming the first thing that does not. Nothing is written
# into DIR.
set -euo pipefail
dir=${1:?usage: verify-audit-bundle.sh DIR TRUSTED_CA.crt}
trusted=${2:?usage: verify-audit-bundle.sh DIR TRUSTED_CA.crt [TRUSTED_CRL.pem]}
crl=${3:-}
fail() { echo "not verified: $*" >&2; exit 1; }
sha() { sha256sum | cut -d' ' -f1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Only regular files are read.
while IFS= read -r -d '' path; do
  fail "${path#"$dir"/} is not a regular file"
done < <(find "$dir" -mindepth 1 ! -type f ! -type d -print0)

# The job and federation, one line each in bundle.json, plain names.
one() {
  local values
  values=$(sed -n "s/^  \"$1\": \"\\(.*\\)\",\$/\\1/p" "$dir/bundle.json")
  [ "$(printf '%s\n' "$values" | grep -c .)" = 1 ] || fail "bundle.json must state one $1"
  [[ $values =~ ^[A-Za-z0-9._-]{1,128}$ ]] || fail "bundle.json's $1 is not a plain name"
  printf '%s' "$values"
}
job=$(one job_id)
federation=$(one federation)
ours() { [ "$1" = "$job" ] || [ "$1" = log ] || [ "$1" = "federation:$federation" ]; }

# Rule 1. Trust: ca.crt is the CA you trust; coordinator.crt is a coordinator's certificate it issued.
for f in ca.crt coordinator.crt; do
  [ "$(grep -c -- '-----BEGIN' "$dir/$f")" = 1 ] || fail "$f must hold exactly one certificate"
done
openssl x509 -in "$dir/ca.crt" -outform DER -out "$tmp/ca.der"
openssl x509 -in "$trusted" -outform DER -out "$tmp/trusted.der"
cmp -s "$tmp/ca.der" "$tmp/trusted.der" || fail "ca.crt is not the federation CA you trust"
openssl verify -no-CApath -no-CAstore -no_check_time -CAfile "$trusted" "$dir/coordinator.crt" > /dev/null 2>&1 \
  || fail "coordinator.crt was not issued by the CA you trust"
if [ -n "$crl" ]; then
  openssl verify -no-CApath -no-CAstore -no_check_time -crl_check -CRLfile "$crl" -CAfile "$trusted" "$dir/coordinator.crt" > /dev/null 2>&1 \
    || fail "coordinator.crt is revoked (or the revocation list is not the CA's)"
fi
san=$(openssl x509 -in "$dir/coordinator.crt" -noout -ext subjectAltName | grep -o 'URI:treaty://[^, ]*' || true)
[[ $san =~ ^URI:treaty://coordinator/[A-Za-z0-9._-]+$ ]] || fail "coordinator.crt is not a coordinator's certificate"

# Rule 2. The links chain: line n is {"seq":n,"prev":P,"entry_sha256":E,"scope":S}, P the
# SHA-256 of line n-1.
[ "$(tail -c1 "$dir/links.jsonl" | od -An -tx1 | tr -d ' ')" = 0a ] || fail "links.jsonl is empty or its last line is cut"
prev=0000000000000000000000000000000000000000000000000000000000000000
re='^\{"seq":([0-9]+),"prev":"([0-9a-f]{64})","entry_sha256":"([0-9a-f]{64})","scope":"([^"\\]*)"\}$'
n=0
declare -A entry_sha link_scope
while IFS= read -r line; do
  n=$((n + 1))
  [[ $line =~ $re ]] || fail "links.jsonl line $n is not a link"
  [ "${BASH_REMATCH[1]}" = "$n" ] || fail "link $n is numbered ${BASH_REMATCH[1]}: links are missing or moved"
  [ "${BASH_REMATCH[2]}" = "$prev" ] || fail "link $n does not follow link $((n - 1))"
  entry_sha[$n]=${BASH_REMATCH[3]}
  link_scope[$n]=${BASH_REMATCH[4]}
  if ours "${BASH_REMATCH[4]}" && [ ! -f "$dir/entries/$n.json" ]; then
    fail "entry $n is of ${BASH_REMATCH[4]} but the bundle leaves it out"
  fi
  prev=$(printf '%s' "$line" | sha)
done < "$dir/links.jsonl"
grep -q "^  \"links\": $n,\$" "$dir/bundle.json" || fail "bundle.json does not state the $n links"

# Rule 3. The signed head: exactly "treaty audit head\nseq N\nsha256 H\ntime_unix_ms T\n" for
# the last link, signed by the coordinator's key.
time=$(sed -n '4s/^time_unix_ms \(-\?[0-9]\+\)$/\1/p' "$dir/head.statement")
printf 'treaty audit head\nseq %s\nsha256 %s\ntime_unix_ms %s\n' "$n" "$prev" "$time" > "$tmp/statement"
cmp -s "$tmp/statement" "$dir/head.statement" || fail "the signed head is not of the last link: links were added or removed"
grep -Eq '"scheme": "(ECDSA_NISTP256_SHA256|RSA_PKCS1_SHA256)"' "$dir/head.json" || fail "head.json names another signature scheme"
openssl x509 -in "$dir/coordinator.crt" -pubkey -noout > "$tmp/coordinator.pub"
openssl dgst -sha256 -verify "$tmp/coordinator.pub" -signature "$dir/head.sig" "$dir/head.statement" > /dev/null \
  || fail "head.sig is not the coordinator's signature of head.statement"

# Rule 4. Each entry hashes to its link, and is of its link's scope: this job, its federation
# or the log. (serde_json escapes every quote inside a value, so "job":" only starts a key.)
value() { [[ $2 =~ \"$1\":\"([^\"\\]*)\" ]] && printf '%s' "${BASH_REMATCH[1]}" || true; }
for file in "$dir"/entries/*; do
  [ -e "$file" ] || continue
  name=$(basename "$file")
  [[ $name =~ ^[1-9][0-9]*\.json$ ]] || fail "entries/$name is not named N.json"
  seq=${name%.json}
  [ -n "${entry_sha[$seq]:-}" ] || fail "entry $seq has no link"
  [ "$(sha < "$file")" = "${entry_sha[$seq]}" ] || fail "entry $seq was altered (entries/$name)"
  text=$(cat "$file")
  entry_job=$(value job "$text")
  entry_federation=$(value federation "$text")
  if [ -n "$entry_job" ]; then scope=$entry_job
  elif [ -n "$entry_federation" ]; then scope="federation:$entry_federation"
  else scope=log; fi
  [ "$scope" = "${link_scope[$seq]}" ] || fail "entry $seq is not of its link's scope"
  ours "$scope" || fail "entry $seq is of $scope, not of this bundle's"
done

# Who exported the bundle is what the log's last audit.exported entry of the job says.
last=
for file in "$dir"/entries/*.json; do
  [ -e "$file" ] || continue
  grep -q '"action":"audit.exported"' "$file" || continue
  seq=$(basename "$file" .json)
  if [ -z "$last" ] || [ "$seq" -gt "$(basename "$last" .json)" ]; then last=$file; fi
done
[ -n "$last" ] || fail "the log records no export of this job"
exporter=$(value actor "$(cat "$last")")
grep -qxF "  \"exported_by\": \"$exporter\"," "$dir/bundle.json" \
  || fail "bundle.json does not name who the log says exported it ($exporter)"

# Rule 5. Each decision is one a round.decided entry vouches for (the first of its
# "documents"), and each such decision is here; each text those entries cite is here, every text
# here is cited, and each hashes to its name.
decided=()
for file in "$dir"/entries/*.json; do
  [ -e "$file" ] || continue
  grep -q '"action":"round.decided"' "$file" && decided+=("$file")
done
documents() { grep -o '"documents":\[[^]]*\]' "$1" | grep -o '[0-9a-f]\{64\}' || true; }
vouched=$(for e in "${decided[@]}"; do documents "$e" | head -n 1; done | sort -u)
cited=$(for e in "${decided[@]}"; do documents "$e" | tail -n +2; done | sort -u)
for h in $vouched; do [ -f "$dir/decisions/$h.json" ] || fail "decisions/$h.json is vouched for but missing"; done
for h in $cited; do [ -f "$dir/texts/$h.txt" ] || fail "texts/$h.txt is cited but missing"; done
for sub in decisions texts; do
  for file in "$dir/$sub"/*; do
    [ -e "$file" ] || continue
    name=$(basename "$file")
    [[ $name =~ ^([0-9a-f]{64})\.(json|txt)$ ]] || fail "$sub/$name is not named by a SHA-256"
    h=${BASH_REMATCH[1]}
    [ "$(sha < "$file")" = "$h" ] || fail "$sub/$name does not hash to its name: it was altered"
    if [ "$sub" = decisions ]; then list=$vouched; else list=$cited; fi
    grep -qx "$h" <<< "$list" || fail "$sub/$name is vouched for by no entry of the bundle"
  done
done
# Each round's results record an entry vouches for (its "results": a round's completion) is
# in results/, each file there is vouched for, and each hashes to its name.
completed=$(for file in "$dir"/entries/*.json; do
  [ -e "$file" ] || continue
  value results "$(cat "$file")"; echo
done | grep . | sort -u || true)
while IFS= read -r h; do
  [ -n "$h" ] || continue
  [[ $h =~ ^[0-9a-f]{64}$ ]] || fail "an entry vouches for a results record under a name that is not a SHA-256"
  [ -f "$dir/results/$h.json" ] || fail "results/$h.json is vouched for but missing"
done <<< "$completed"
if [ -d "$dir/results" ]; then
  for file in "$dir"/results/*; do
    [ -e "$file" ] || continue
    name=$(basename "$file")
    [[ $name =~ ^([0-9a-f]{64})\.json$ ]] || fail "results/$name is not named by a SHA-256"
    h=${BASH_REMATCH[1]}
    [ "$(sha < "$file")" = "$h" ] || fail "results/$name does not hash to its name: it was altered"
    grep -qx "$h" <<< "$completed" || fail "results/$name is vouched for by no entry of the bundle"
  done
fi
echo "verified: job $job, $n links, head signed by ${san#URI:} at time_unix_ms $time"
