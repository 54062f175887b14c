#!/bin/bash
# Writes the fixture of a queue left by an earlier release: run that
# release's `inferq serve` with no workers, submit jobs, a batch file and a
# cancel over HTTP, dump what it stored (dump/main.go), and write what the
# test should expect of each job.
#
#	testdata/upgrade/gen.sh RELEASE /path/to/that/release/inferq
#
# The release's binary comes from its commit: git worktree add /tmp/old
# RELEASE && (cd /tmp/old && go build -o /tmp/old-inferq ./cmd/inferq).
set -euo pipefail
release=$1 bin=$2
here=$(cd "$(dirname "$0")" && pwd) root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p "$work/repo/iris/1" "$work/repo/total/1" "$root/testdata/upgrade/.total"
cp "$root/testdata/models/iris/1/model.onnx" "$work/repo/iris/1/"
# total (internal/onnxbuild) cannot stack rows: the release lays a batch
# file's lines end to end in one request.
cat > "$root/testdata/upgrade/.total/main.go" <<'GO'
package main

import (
	"os"

	"github.com/inferq/inferq/internal/onnxbuild"
)

func main() { os.Stdout.Write(onnxbuild.Total()) }
GO
(cd "$root" && go run ./testdata/upgrade/.total) > "$work/repo/total/1/model.onnx"
rm -r "$root/testdata/upgrade/.total"
token=upgrade-fixture-token-0123456789 nport=14299 hport=18099
ONNXRUNTIME_LIB=${ONNXRUNTIME_LIB:-$root/build/onnxruntime/libonnxruntime.so.1} \
	"$bin" serve --data "$work/data" --models "$work/repo" --only none --http 127.0.0.1:$hport \
	--nats-listen 127.0.0.1:$nport --nats-token $token --log-level warn > "$work/serve.log" 2>&1 &
pid=$!
u=http://127.0.0.1:$hport
for _ in $(seq 100); do curl -sf $u/v1/health >/dev/null && break; sleep 0.2; done
req() { printf '{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[%s]}]}' "$1"; }
id() { python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'; }
jobs=()
for x in 5.1,3.5,1.4,0.2 6.7,3.0,5.2,2.3 5.9,3.0,4.2,1.5; do
	jobs+=("{\"id\":\"$(curl -sf -XPOST $u/v1/models/iris/jobs -d "$(req $x)" | id)\",\"x\":[$x]}")
done
x=6.3,2.5,5.0,1.9
jobs+=("{\"id\":\"$(curl -sf -XPOST $u/v1/models/iris/jobs -H 'Inferq-Priority: high' -d "$(req $x)" | id)\",\"x\":[$x],\"priority\":\"high\"}")
cancelled=$(curl -sf -XPOST $u/v1/models/iris/jobs -d "$(req 5.0,3.4,1.5,0.2)" | id)
curl -sf -XDELETE $u/v1/jobs/$cancelled > /dev/null
lines=()
for x in 5.1,3.5,1.4,0.2 6.7,3.0,5.2,2.3 5.9,3.0,4.2,1.5 4.9,3.0,1.4,0.2 6.3,3.3,6.0,2.5; do
	printf '{"custom_id":"line-%d",%s\n' ${#lines[@]} "$(req $x | cut -c2-)" >> "$work/batch.jsonl"
	lines+=("[$x]")
done
batch=$(curl -sf -XPOST $u/v1/models/iris/batches --data-binary @"$work/batch.jsonl" | id)
totals=()
for x in 1,2,3 4,5,6,7,8,9 0.5,0.25,0.125; do
	printf '{"custom_id":"line-%d","inputs":[{"name":"x","shape":[%d,3],"datatype":"FP32","data":[%s]}]}\n' ${#totals[@]} $(( $(tr -cd , <<< $x | wc -c) / 3 + 1 )) $x >> "$work/total.jsonl"
	totals+=("[$x]")
done
total=$(curl -sf -XPOST $u/v1/models/total/batches --data-binary @"$work/total.jsonl" | id)
sleep 1 # let the API's trackers settle
(cd "$root" && go run ./testdata/upgrade/dump -nats nats://$token@127.0.0.1:$nport -objects "$work/data/objects") > "$here/$release-queue.json"
join() { local IFS=,; echo "$*"; }
cat > "$here/$release-jobs.json" <<JSON
{"release":"$release","model":"iris","jobs":[$(join "${jobs[@]}")],"cancelled":"$cancelled",
 "batch":{"id":"$batch","lines":[$(join "${lines[@]}")]},
 "unstackable":{"model":"total","id":"$total","lines":[$(join "${totals[@]}")]}}
JSON
kill -TERM $pid; wait $pid || true
echo "wrote $here/$release-queue.json and $release-jobs.json"
