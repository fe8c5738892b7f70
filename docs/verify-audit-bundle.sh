#!/usr/bin/env bash
# Checks a Treaty audit bundle (`treaty audit export`) with standard tools only — bash, grep,
# sed, cmp, sha256sum and openssl — following docs/AUDIT.md, without Treaty:
#   bash docs/verify-audit-bundle.sh DIR TRUSTED_CA.crt
# TRUSTED_CA.crt is the federation CA's certificate from your own copy, never the bundle's.
# Exit 0 when the bundle verifies; 1 naming the first thing that does not. Nothing is written
# into DIR.
set -euo pipefail
dir=${1:?usage: verify-audit-bundle.sh DIR TRUSTED_CA.crt}
trusted=${2:?usage: verify-audit-bundle.sh DIR TRUSTED_CA.crt}
fail() { echo "not verified: $*" >&2; exit 1; }
sha() { sha256sum | cut -d' ' -f1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

job=$(sed -n 's/^  "job_id": "\([^"\\]*\)",$/\1/p' "$dir/bundle.json")
federation=$(sed -n 's/^  "federation": "\([^"\\]*\)",$/\1/p' "$dir/bundle.json")
[ -n "$job" ] || fail "bundle.json names no job"

# 1. Trust: ca.crt is the CA you trust; coordinator.crt is a coordinator's certificate it issued.
for f in ca.crt coordinator.crt; do
  [ "$(grep -c -- '-----BEGIN CERTIFICATE-----' "$dir/$f")" = 1 ] || fail "$f must hold exactly one certificate"
done
openssl x509 -in "$dir/ca.crt" -outform DER -out "$tmp/ca.der"
openssl x509 -in "$trusted" -outform DER -out "$tmp/trusted.der"
cmp -s "$tmp/ca.der" "$tmp/trusted.der" || fail "ca.crt is not the federation CA you trust"
openssl verify -no-CApath -no-CAstore -no_check_time -CAfile "$trusted" "$dir/coordinator.crt" > /dev/null 2>&1 \
  || fail "coordinator.crt was not issued by the CA you trust"
openssl x509 -in "$dir/coordinator.crt" -noout -ext subjectAltName | grep -q 'URI:treaty://coordinator/' \
  || fail "coordinator.crt is not a coordinator's certificate"

# 2. The links chain: line n is {"seq":n,"prev":<SHA-256 of line n-1>,"entry_sha256":E,"job":J}.
[ "$(tail -c1 "$dir/links.jsonl" | od -An -tx1 | tr -d ' ')" = 0a ] || fail "links.jsonl is empty or its last line is cut"
prev=0000000000000000000000000000000000000000000000000000000000000000
re='^\{"seq":([0-9]+),"prev":"([0-9a-f]{64})","entry_sha256":"([0-9a-f]{64})","job":"([^"\\]*)"\}$'
n=0
declare -A entry_sha
while IFS= read -r line; do
  n=$((n + 1))
  [[ $line =~ $re ]] || fail "links.jsonl line $n is not a link"
  [ "${BASH_REMATCH[1]}" = "$n" ] || fail "link $n is numbered ${BASH_REMATCH[1]}: links are missing or moved"
  [ "${BASH_REMATCH[2]}" = "$prev" ] || fail "link $n does not follow link $((n - 1))"
  entry_sha[$n]=${BASH_REMATCH[3]}
  if [ "${BASH_REMATCH[4]}" = "$job" ] && [ ! -f "$dir/entries/$n.json" ]; then
    fail "entry $n is of job $job but the bundle leaves it out"
  fi
  prev=$(printf '%s' "$line" | sha)
done < "$dir/links.jsonl"

# 3. The signed head: exactly "treaty audit head\nseq N\nsha256 H\ntime_unix_ms T\n" for the
#    last link, signed by the coordinator's key.
time=$(sed -n '4s/^time_unix_ms \(-\?[0-9]\+\)$/\1/p' "$dir/head.statement")
printf 'treaty audit head\nseq %s\nsha256 %s\ntime_unix_ms %s\n' "$n" "$prev" "$time" > "$tmp/statement"
cmp -s "$tmp/statement" "$dir/head.statement" || fail "the signed head is not of the last link: links were added or removed"
grep -Eq '"scheme": "(ECDSA_NISTP256_SHA256|RSA_PKCS1_SHA256)"' "$dir/head.json" || fail "head.json names another signature scheme"
openssl x509 -in "$dir/coordinator.crt" -pubkey -noout > "$tmp/coordinator.pub"
openssl dgst -sha256 -verify "$tmp/coordinator.pub" -signature "$dir/head.sig" "$dir/head.statement" > /dev/null \
  || fail "head.sig is not the coordinator's signature of head.statement"

# 4. Each entry hashes to its link and is of this job, its federation, or the log itself.
for file in "$dir"/entries/*; do
  [ -e "$file" ] || continue
  name=$(basename "$file")
  [[ $name =~ ^[1-9][0-9]*\.json$ ]] || fail "entries/$name is not named N.json"
  seq=${name%.json}
  [ -n "${entry_sha[$seq]:-}" ] || fail "entry $seq has no link"
  [ "$(sha < "$file")" = "${entry_sha[$seq]}" ] || fail "entry $seq was altered (entries/$name)"
  if grep -q '"job":"' "$file" && ! grep -q "\"job\":\"$job\"" "$file"; then fail "entry $seq is another job's"; fi
  if grep -q '"federation":"' "$file" && ! grep -q "\"federation\":\"$federation\"" "$file"; then fail "entry $seq is another federation's"; fi
done

# 5. Each decision is the one its round's round.decided entry vouches for (the first of its
#    "documents"); each text those entries cite is here and hashes to its name.
decided=$(grep -l '"action":"round.decided"' "$dir"/entries/*.json 2>/dev/null || true)
for file in "$dir"/decisions/*; do
  [ -e "$file" ] || continue
  name=$(basename "$file")
  [[ $name =~ ^round-([0-9]+)\.json$ ]] || fail "decisions/$name is not named round-R.json"
  round=${BASH_REMATCH[1]}
  h=$(sha < "$file")
  found=
  for e in $decided; do
    # Round 0 (the statistics round) is written without a "round" field.
    if [ "$round" = 0 ]; then grep -q '"round":' "$e" && continue; else grep -q "\"round\":$round," "$e" || continue; fi
    if grep -q "\"documents\":\[\"$h\"" "$e"; then found=1; fi
  done
  [ -n "$found" ] || fail "decisions/$name is not the decision round $round's entry vouches for"
done
cited=$(for e in $decided; do grep -o '"documents":\[[^]]*\]' "$e" | grep -o '[0-9a-f]\{64\}' | tail -n +2; done | sort -u)
for h in $cited; do
  [ -f "$dir/texts/$h.txt" ] || fail "texts/$h.txt is cited but missing"
done
for file in "$dir"/texts/*; do
  [ -e "$file" ] || continue
  h=$(basename "$file" .txt)
  [ "$(sha < "$file")" = "$h" ] || fail "texts/$(basename "$file") does not hash to its name"
  grep -qx "$h" <<< "$cited" || fail "texts/$(basename "$file") is cited by no decision"
done
echo "verified: job $job, $n links, head signed by $(openssl x509 -in "$dir/coordinator.crt" -noout -ext subjectAltName | grep -o 'treaty://coordinator/[^, ]*')"
