#!/usr/bin/env bash
# Mutation testing (mutmut 3) of the core modules with fast, targeted test selections. Not in CI: 10-60 min per
# module on 2 cores. Scores and surviving mutants: docs/testing.md.
#
#   bash scripts/mutation_test.sh MODULE [WORKDIR [FUNCTION ...]]
#
# MODULE: attention | apf | stats | checks | checkpoint (the case list below says what each mutates and runs).
# The committed tree (git archive HEAD; REF=<commit> for another one) is unpacked into WORKDIR (default: a new
# temporary folder) and mutated there; the checkout itself is never touched. Run again with the same WORKDIR to
# continue an interrupted run. FUNCTION: mutant-name patterns that replace the module's selection, to re-measure
# only the functions whose tests changed (e.g. 'monai_ext.utils.checkpoint.x__weights_only__*'); then
# BASE=<earlier WORKDIR>/results.txt makes the summary take the earlier status of every mutant not re-run
# (scripts/mutation_summary.py --base). mutmut is installed into .venv when missing (pip install mutmut; never torch).
# TESTS_REF=<commit>: the tests/ folder of another commit over REF's (new tests against the code of a pinned REF).
# Threads: OMP_NUM_THREADS=1, MUTMUT_CHILDREN parallel mutants (default 2). Timeouts: mutmut's wall limit is
# (estimated test time + 1 s) * MUTMUT_TIMEOUT_MULTIPLIER (default 60; mutmut's own 15 gave spurious timeouts,
# counted as killed, on the loaded 2-core machine); changing it re-runs only the timed-out mutants.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
MODULE="${1:?usage: $0 attention|apf|stats|checks|checkpoint [WORKDIR]}"
WORK="${2:-$(mktemp -d -t monai_ext_mutation.XXXXXX)}"
shift $(( $# < 2 ? $# : 2 ))
REF="${REF:-HEAD}"

A=monai_ext.networks.attention
case "$MODULE" in
  attention)  # the registry, the shared projections, exact softmax, SimA, sequence normalization and the
    # softmax-free module (its fused autograd kernel, _SoftmaxFreeFold / _sfn_fold_graph / _fold_m, is left out)
    # (sequence_norm and the fold kernel live in networks/sfn_kernel.py: one only_mutate pattern for both files)
    FILE='monai_ext/networks/*'
    S=monai_ext.networks.sfn_kernel
    SELECT=("$S.x_sequence_norm__*" "$A.x_register_attention__*" "$A.x_check_attention_name__*"
            "$A.x_build_attention__*" "$A.x__check_mask__*" "$S.x__masked_input__*" "$A.xǁMultiHeadAttentionBaseǁ*"
            "$A.xǁSoftmaxAttentionǁ*" "$A.xǁSimAAttentionǁ*" "$A.xǁSoftmaxFreeAttentionǁ*")
    # not the timed test (the FLOP-counted ones cover it) nor TorchScript scripting (cannot script mutmut's trampolines)
    TESTS=(tests/test_attention.py -k 'not scales_linearly and not scripted') ;;
  apf)  # quadtree planning, Z-order, patching and unpatching (not the edge-map / gray conversion helpers)
    if [ -n "$(git -C "$ROOT" ls-tree --name-only "$REF" monai_ext/transforms/apf/quadtree.py)" ]; then
      # split layout (issue 14): quadtree.py, functional.py in monai_ext/transforms/apf/, Z-order in utils/zorder.py
      # (only these three files are mutated: generating mutants for all of monai_ext/* took minutes)
      FILE='monai_ext/utils/zorder.py monai_ext/transforms/apf/quadtree.py monai_ext/transforms/apf/functional.py'
      Z=monai_ext.utils.zorder Q=monai_ext.transforms.apf.quadtree P=monai_ext.transforms.apf.functional
      # (_block_counts is block_counts since the whole-slide planner reuses it; both names, for old and new REFs)
      SELECT=("$Z.x__part1by1__*" "$Z.x_morton_encode__*" "$Z.x_zorder_grid__*" "$Z.x_grid_side__*"
              "$Q.x__block_counts__*" "$Q.x_block_counts__*" "$Q.x__count_pyramid__*" "$Q.x__build_tree__*"
              "$Q.x_plan_quadtree__*"
              "$Z.x_tokens_to_grid__*" "$Z.x_grid_to_tokens__*" "$Z.x_zorder_to_raster__*" "$P.x_extract_patches__*"
              "$P.x__resize_matrix__*" "$P.x__resize_up__*" "$P.x_quadtree_unpatch__*" "$P.x_leaf_tokens__*")
      # planning from counts and the exact fixed-mode ranking (commit 26dd91a; absent before, so no mutants there)
      SELECT+=("$Q.x__rank_splits__*" "$Q.x__check_kinds__*" "$Q.x_plan_settings__*" "$Q.x_plan_from_counts__*")
    else
      FILE=monai_ext/transforms/apf.py
      M=monai_ext.transforms.apf
      SELECT=("$M.x__part1by1__*" "$M.x_morton_encode__*" "$M.x_zorder_grid__*" "$M.x__grid_side__*"
              "$M.x__block_counts__*" "$M.x__count_pyramid__*" "$M.x__build_tree__*" "$M.x_plan_quadtree__*"
              "$M.x_tokens_to_grid__*" "$M.x_grid_to_tokens__*" "$M.x_zorder_to_raster__*" "$M.x_extract_patches__*"
              "$M.x__resize_matrix__*" "$M.x__resize_up__*" "$M.x_quadtree_unpatch__*")
    fi
    TESTS=(tests/test_apf.py tests/test_apf_errors.py tests/test_apf_mutation.py) ;;
  stats)  # ROC / AUROC, Youden, confusion, calibration, bootstrap indices and percentile CIs: all of it
    FILE=monai_ext/reports/stats.py
    SELECT=("monai_ext.reports.stats.*")
    # not the bundle / Chromium / CLI / figure tests, nor the evaluator tests (HD95 units, missing metric details:
    # no direct stats call); one case each of the summary-level bootstrap tests (400 resamples through
    # classification_summary, ~0.7 s a case; test_report_stats.py makes their checks directly with 30 resamples)
    K='not bundle and not chromium and not cli and not segmentation_dice and not metrics_json and not hd95'
    K+=' and not metric_details and not (auroc_equals_sklearn and not 60-1-True)'
    K+=' and not (plain_bootstrap and not 0.95 and not roc_band and not segmentation)'  # (one line in setup.cfg)
    TESTS=(tests/test_reports.py tests/test_report_stats.py tests/test_reports_auprc.py -k "$K") ;;
  checks)  # the bundles' datalist checks run before training
    FILE=monai_ext/workflows/checks.py
    SELECT=("monai_ext.workflows.checks.*")
    TESTS=(tests/test_workflows.py tests/test_prepare_checks.py tests/test_checks_datalist.py) ;;
  checkpoint)  # the one checkpoint loader (weights_only=True)
    FILE=monai_ext/utils/checkpoint.py
    SELECT=("monai_ext.utils.checkpoint.*")
    # (not the test that parses the package source: it reads the mutated file)
    TESTS=(tests/test_checkpoint.py tests/test_checkpoint_edges.py tests/test_networks.py
           -k 'not no_weights_only_false and (test_checkpoint or transfer or compare_state_dict)') ;;
  *) echo "unknown module '$MODULE' (attention, apf, stats, checks, checkpoint)" >&2; exit 2 ;;
esac
if [ $# -gt 0 ]; then SELECT=("$@"); fi

"$PY" -c "import mutmut" 2>/dev/null || "$PY" -m pip install -q mutmut
mkdir -p "$WORK"
if [ -e "$WORK/mutants" ]; then
  echo "continuing the mutation run in $WORK (delete $WORK/mutants to start over)" >&2
else
  git -C "$ROOT" archive "$REF" | tar -x -C "$WORK"
  if [ -n "${TESTS_REF:-}" ]; then git -C "$ROOT" archive "$TESTS_REF" tests | tar -x -C "$WORK"; fi
fi
KEEP=()
for t in "${TESTS[@]}"; do  # a test file missing in the tree (e.g. newer than REF) is left out
  if [[ "$t" == tests/*.py && ! -e "$WORK/$t" ]]; then echo "not in the tree: $t (left out)" >&2; else KEEP+=("$t"); fi
done
TESTS=("${KEEP[@]}")

# mutmut reads setup.cfg when pyproject.toml has no [tool.mutmut]; the test selection travels with it
{
  echo "[mutmut]"
  echo "source_paths = monai_ext"
  echo "only_mutate ="
  for f in $FILE; do echo "    $f"; done
  echo "also_copy ="
  echo "    bundles"
  echo "    scripts"
  echo "pytest_add_cli_args_test_selection ="
  for t in "${TESTS[@]}"; do echo "    $t"; done
  echo "pytest_add_cli_args ="
  echo "    -p"
  echo "    no:cacheprovider"
  echo "process_isolation = forkserver"
  echo "timeout_multiplier = ${MUTMUT_TIMEOUT_MULTIPLIER:-60}"
} > "$WORK/setup.cfg"

cd "$WORK"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
echo "mutating $FILE in $WORK; tests: ${TESTS[*]}" >&2
"$PY" -m mutmut run --max-children "${MUTMUT_CHILDREN:-2}" "${SELECT[@]}" || true
"$PY" -m mutmut results --all true > "$WORK/results.txt" || true
"$PY" "$ROOT/scripts/mutation_summary.py" ${BASE:+--base "$BASE"} "$WORK/results.txt" "$FILE" "${SELECT[@]}" \
  | tee "$WORK/summary.txt"
echo "show a mutant: cd $WORK && $PY -m mutmut show <name>" >&2
