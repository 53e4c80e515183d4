-- Argo CD health of a qfleet.io/QuantizedModel, read from its status only (health is not inherited from children:
-- the operator reports its Jobs, Deployments and canary in the conditions).
-- Order: spec not yet observed -> Progressing; a terminal failure -> Degraded; a calibration refresh under way
-- (CalibrationStale True, not backing off) -> Progressing; Ready True -> Healthy; a paused rollout -> Suspended;
-- anything else (a step running) -> Progressing. A refresh that was rolled back or failed is Degraded like any
-- rolled-back or failed revision (RolledBack, or the failing step's reason), while it backs off.
local hs = {}

local failed_reasons = {
  InvalidSpec = true,
  NoCompatibleNodePool = true,
  CalibrationFailed = true,
  EngineBuildFailed = true,
  EvaluationFailed = true,
  QualityGateFailed = true,
}
local pipeline = {"Calibrated", "EngineBuilt", "Evaluated"}

local function message_of(condition)
  if condition.message ~= nil and condition.message ~= "" then
    return condition.type .. ": " .. condition.reason .. ": " .. condition.message
  end
  return condition.type .. ": " .. condition.reason
end

if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the qfleet operator to report a status"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and (obj.status.observedGeneration == nil or obj.status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the spec update to be observed"
  return hs
end

local by_type = {}
for _, condition in ipairs(obj.status.conditions) do
  by_type[condition.type] = condition
  if condition.reason == "InvalidSpec" then
    hs.status = "Degraded"
    hs.message = message_of(condition)
    return hs
  end
end

if by_type.RolledBack ~= nil and by_type.RolledBack.status == "True" then
  hs.status = "Degraded"
  hs.message = message_of(by_type.RolledBack)
  return hs
end

for _, condition in ipairs(obj.status.conditions) do
  if condition.status == "False" and failed_reasons[condition.reason] then
    hs.status = "Degraded"
    hs.message = message_of(condition)
    return hs
  end
end

local stale = by_type.CalibrationStale
if stale ~= nil and stale.status == "True" and stale.reason ~= "RefreshBackingOff" then
  hs.status = "Progressing"
  hs.message = message_of(stale)
  return hs
end

local ready = by_type.Ready
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = message_of(ready)
  return hs
end

local paused = obj.spec ~= nil and obj.spec.rollout ~= nil and obj.spec.rollout.paused == true
if (ready ~= nil and ready.reason == "RolloutPaused") or paused then
  hs.status = "Suspended"
  if ready ~= nil and ready.reason == "RolloutPaused" then
    hs.message = message_of(ready)
  else
    hs.message = "The rollout is paused (spec.rollout.paused)"
  end
  return hs
end

hs.status = "Progressing"
for _, step in ipairs(pipeline) do
  local condition = by_type[step]
  if condition == nil or condition.status ~= "True" then
    hs.message = condition ~= nil and message_of(condition) or ("Waiting for " .. step)
    return hs
  end
end
hs.message = ready ~= nil and message_of(ready) or "Waiting for the canary"
return hs
