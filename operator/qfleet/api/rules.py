"""Messages of the rules that span fields or ranges, shared word for word with the CRD's CEL rules.

The parser adds the offending value; a unit test checks that the CRD's `x-kubernetes-validations`
messages are exactly `CEL_MESSAGES`, so `kubectl apply` and `qfleet` explain a mistake alike.
"""

KV_AUTO_NEEDS_LADDER = "kvCache: auto needs kvCacheLadder, the formats to try in order, e.g. [nvfp4, fp8, bf16]"
KV_LADDER_ONLY_WITH_AUTO = "kvCacheLadder is read only when kvCache is auto: remove it, or set kvCache: auto"
WEIGHTS_BF16_ONLY = (
    "weights: only bf16 is served in this version (qfleet quantizes the KV cache, not the weights): "
    "set weights: bf16 or leave it out"
)
STEPS_STRICTLY_INCREASE = (
    "step weights must strictly increase, e.g. 1, 10, 100: sort the steps and drop repeated weights"
)
STEPS_END_AT_FULL_TRAFFIC = "the last step must have weight 100 (all traffic on the new revision): add - weight: 100"
WEIGHT_RANGE = 'weight is a percent of traffic above 0 and at most 100, e.g. 1, 10, 100 or "0.5"'
THRESHOLD_POSITIVE = 'thresholds must be above 0, e.g. "0.005"'
ABORT_AT_LEAST_MAX = (
    "abortAbove must be at least max (above max an interval fails, above abortAbove the rollout "
    "aborts at once): raise abortAbove or lower max"
)
MEMORY_FRACTION_RANGE = 'a fraction of free GPU memory above 0 and at most 1, e.g. "0.9"'
SAMPLE_SHARE_RANGE = 'a share of requests above 0 and at most 1, e.g. "0.1"'
CONFIDENCE_RANGE = 'a confidence from 0.5 to below 1, e.g. "0.95"'
INTERVAL_AT_LEAST_ONE_SECOND = "the analysis interval must be at least 1s, e.g. 5m"
ONE_TRAFFIC_ROUTING = "set exactly one of gatewayAPI (weights on an HTTPRoute) or replicas (weights by replica counts)"
TENSOR_PARALLEL_DIVIDES_GPUS = (
    "engine.tensorParallel must divide nodePool.gpusPerReplica (the quotient is pipeline parallelism), "
    "e.g. tensorParallel: 8 with gpusPerReplica: 8"
)
REFRESH_INTERVAL_AT_LEAST_ONE_HOUR = (
    "a refresh interval must be at least 1h (each refresh runs a calibration and a canary), e.g. 168h"
)
RECENT_SHARE_RANGE = 'a share of the calibration samples from 0 to 1, e.g. "0.5"'
REFRESH_NEEDS_A_CAUSE = (
    "refresh needs a schedule (e.g. 168h) or at least one trigger (fallbackRate, qualityDrop, outOfRange): "
    "add one, or remove refresh"
)

CEL_MESSAGES = frozenset(
    {
        KV_AUTO_NEEDS_LADDER,
        KV_LADDER_ONLY_WITH_AUTO,
        WEIGHTS_BF16_ONLY,
        STEPS_STRICTLY_INCREASE,
        STEPS_END_AT_FULL_TRAFFIC,
        WEIGHT_RANGE,
        THRESHOLD_POSITIVE,
        ABORT_AT_LEAST_MAX,
        MEMORY_FRACTION_RANGE,
        SAMPLE_SHARE_RANGE,
        CONFIDENCE_RANGE,
        INTERVAL_AT_LEAST_ONE_SECOND,
        ONE_TRAFFIC_ROUTING,
        TENSOR_PARALLEL_DIVIDES_GPUS,
        REFRESH_INTERVAL_AT_LEAST_ONE_HOUR,
        REFRESH_NEEDS_A_CAUSE,
        RECENT_SHARE_RANGE,
    }
)
