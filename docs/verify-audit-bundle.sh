#!/usr/bin/env bash
# Checks a Treaty audit bundle (`treaty audit export`) with standard tools only — bash,
# sha256sum and openssl — following docs/AUDIT.md, without Treaty:
#   bash docs/verify-audit-bundle.sh DIR
# Exit 0 when the bundle verifies; 1 naming the first thing that does not.
set -euo pipefail
dir=${1:?usage: verify-audit-bundle.sh DIR}
fail() { echo "not verified: $*" >&2; exit 1; }
sha() { sha256sum | cut -d' ' -f1; }

# 1. The links chain: link n is {"seq":n,"prev":"<SHA-256 of link n-1's line>","entry_sha256":"..."}.
prev=0000000000000000000000000000000000000000000000000000000000000000
n=0
declare -A entry_sha
while IFS= read -r line; do
  n=$((n + 1))
  case "$line" in
    "{\"seq\":$n,\"prev\":\"$prev\",\"entry_sha256\":\""*'"}') ;;
    *) fail "link $n does not follow link $((n - 1)) (links.jsonl line $n)" ;;
  esac
  digest=${line#*\"entry_sha256\":\"}
  entry_sha[$n]=${digest%\"\}}
  prev=$(printf '%s' "$line" | sha)
done < "$dir/links.jsonl"
[ "$n" -gt 0 ] || fail "links.jsonl holds no link"

# 2. Each entry file hashes to its link's entry_sha256.
for file in "$dir"/entries/*.json; do
  [ -e "$file" ] || continue
  seq=$(basename "$file" .json)
  [ -n "${entry_sha[$seq]:-}" ] || fail "entry $seq has no link"
  [ "$(sha < "$file")" = "${entry_sha[$seq]}" ] || fail "entry $seq was altered (entries/$seq.json)"
done

# 3. The signed head states the last link, and its signature is the coordinator's.
grep -qx "seq $n" "$dir/head.statement" || fail "the signed head is not at link $n: links were added or removed"
grep -qx "sha256 $prev" "$dir/head.statement" || fail "the signed head states another last link"
openssl x509 -in "$dir/coordinator.crt" -pubkey -noout > "$dir/.coordinator.pub"
trap 'rm -f "$dir/.coordinator.pub"' EXIT
openssl dgst -sha256 -verify "$dir/.coordinator.pub" -signature "$dir/head.sig" "$dir/head.statement" > /dev/null \
  || fail "head.sig is not the coordinator's signature of head.statement"
openssl verify -no_check_time -CAfile "$dir/ca.crt" "$dir/coordinator.crt" > /dev/null \
  || fail "coordinator.crt was not issued by ca.crt"

# 4. Each cited text hashes to its name.
for file in "$dir"/texts/*.txt; do
  [ -e "$file" ] || continue
  [ "$(sha < "$file")" = "$(basename "$file" .txt)" ] || fail "$(basename "$file") does not hash to its name"
done
echo "verified: $n links, head signed by $(openssl x509 -in "$dir/coordinator.crt" -noout -subject)"
echo "CA: $(openssl x509 -in "$dir/ca.crt" -noout -fingerprint -sha256)"
