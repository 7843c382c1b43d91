//! Session budgets and loop guards for `tools/call` requests: per principal (agent + subject)
//! counters of calls, calls per tool, spend and rate, and the run of identical calls. Checking
//! and counting happen under one lock, so concurrent calls never exceed a limit; in memory, per
//! gateway process, idle principals evicted first when the map is full.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use mandate_core::Clock;
use parking_lot::Mutex;
use serde::Deserialize;

/// What exceeding a budget (calls or spend) does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnExceed {
    /// Refuse with `budget_exceeded`.
    #[default]
    Deny,
    /// Refuse with `approval_required`: the call goes through with the owner's approval.
    StepUp,
}

/// `rate = { calls = N, per_secs = S }`: at most N calls in any S seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateConfig {
    pub calls: u32,
    pub per_secs: u64,
}

/// `[budget]` of the governance file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// Tool calls per principal session (all its MCP sessions together).
    pub max_calls: Option<u64>,
    /// Tool calls per MCP session (`Mcp-Session-Id`), on top of `max_calls`.
    pub max_calls_per_mcp_session: Option<u64>,
    /// Spend units per principal session (each call adds its tool's `cost`).
    pub max_spend: Option<u64>,
    pub rate: Option<RateConfig>,
    /// When set, counters (not rate or loop history) restart this long after a window opened.
    pub window_secs: Option<u64>,
    #[serde(default)]
    pub on_exceed: OnExceed,
    /// Principals tracked at once (default 100 000); the least recently active leave first.
    pub max_sessions: Option<usize>,
    #[serde(default)]
    pub tools: BTreeMap<String, ToolBudget>,
}

/// `[budget.tools.<name>]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolBudget {
    pub max_calls: Option<u64>,
    /// Spend units per call of this tool (default 0: tools spend only what is declared).
    #[serde(default)]
    pub cost: u64,
    pub rate: Option<RateConfig>,
    /// Overrides `[budget] on_exceed` for this tool's limits.
    pub on_exceed: Option<OnExceed>,
}

/// `[loop_guard]`: the same tool with the same arguments more than `max_repeats` times in a row.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoopGuardConfig {
    pub max_repeats: u32,
    /// When set, a repeat more than this long after the previous identical call starts a new run.
    pub window_secs: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum BudgetConfigError {
    #[error("{0}: rate must have 1..=10000 calls per 1..=86400 seconds")]
    Rate(String),
    #[error("loop_guard.max_repeats must be at least 1")]
    Repeats,
    #[error("budget.window_secs and loop_guard.window_secs must be 1..=31536000")]
    Window,
    #[error("budget.max_sessions must be at least 1")]
    Sessions,
}

const DEFAULT_MAX_SESSIONS: usize = 100_000;
/// Distinct tools counted per principal; calls of further unconfigured tools share one counter.
const MAX_TRACKED_TOOLS: usize = 256;
/// MCP sessions counted per principal; the least recently used is forgotten beyond this.
const MAX_MCP_SESSIONS: usize = 64;
/// The shared counter of tools beyond [`MAX_TRACKED_TOOLS`].
const OTHER_TOOLS: &str = "";

impl BudgetConfig {
    pub fn validate(&self) -> Result<(), BudgetConfigError> {
        let rate_ok = |r: &RateConfig| (1..=10_000).contains(&r.calls) && (1..=86_400).contains(&r.per_secs);
        if self.rate.as_ref().is_some_and(|r| !rate_ok(r)) {
            return Err(BudgetConfigError::Rate("budget".into()));
        }
        if let Some((name, _)) = self.tools.iter().find(|(_, t)| t.rate.as_ref().is_some_and(|r| !rate_ok(r))) {
            return Err(BudgetConfigError::Rate(format!("budget.tools.{name}")));
        }
        if self.window_secs.is_some_and(|w| !(1..=31_536_000).contains(&w)) {
            return Err(BudgetConfigError::Window);
        }
        if self.max_sessions == Some(0) {
            return Err(BudgetConfigError::Sessions);
        }
        Ok(())
    }
}

impl LoopGuardConfig {
    pub fn validate(&self) -> Result<(), BudgetConfigError> {
        if self.max_repeats == 0 {
            return Err(BudgetConfigError::Repeats);
        }
        if self.window_secs.is_some_and(|w| !(1..=31_536_000).contains(&w)) {
            return Err(BudgetConfigError::Window);
        }
        Ok(())
    }
}

/// Who a session belongs to: the agent (or, without one, the client) and the subject.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub agent: String,
    pub subject: String,
}

/// One `tools/call` to admit.
#[derive(Debug, Clone)]
pub struct PlannedCall {
    pub tool: String,
    /// SHA-256 of the tool name and canonical arguments: what the loop guard compares.
    pub fingerprint: [u8; 32],
    /// Carries a matching owner approval: step-up limits do not apply.
    pub approved: bool,
}

/// A session's counters as they were before a call (facts for policy).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub calls: u64,
    pub tool_calls: u64,
    pub spend: u64,
    /// Identical calls immediately before this one.
    pub repeats: u32,
}

/// Which limit refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Budget,
    Rate,
    Loop,
}

impl LimitKind {
    /// The `error` code of the refusal.
    pub fn code(self) -> &'static str {
        match self {
            Self::Budget => "budget_exceeded",
            Self::Rate => "rate_limited",
            Self::Loop => "loop_detected",
        }
    }
}

/// A refused call: which limit, its value and the count it reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    pub kind: LimitKind,
    /// Index of the refused call in the request.
    pub call: usize,
    /// E.g. `budget.tools.search.max_calls=300 count=300`.
    pub description: String,
    /// For rate limits: seconds until a call would be admitted.
    pub retry_after_secs: Option<u64>,
    /// The limit is configured `on_exceed = "step_up"`: an approval lifts it.
    pub step_up: bool,
}

#[derive(Debug, Clone, Default)]
struct ToolState {
    calls: u64,
    spend: u64,
    recent: VecDeque<i64>,
}

#[derive(Debug, Clone)]
struct LastCall {
    fingerprint: [u8; 32],
    repeats: u32,
    at_ms: i64,
}

#[derive(Debug, Clone, Default)]
struct SessionState {
    window_start_ms: i64,
    last_seen_ms: i64,
    calls: u64,
    spend: u64,
    recent: VecDeque<i64>,
    tools: HashMap<String, ToolState>,
    /// MCP session id -> (calls, last seen).
    mcp: HashMap<String, (u64, i64)>,
    last_call: Option<LastCall>,
}

/// The counters of every tracked session, and the limits they are held to.
pub struct Budgets {
    config: BudgetConfig,
    loop_guard: Option<LoopGuardConfig>,
    clock: Arc<dyn Clock>,
    sessions: Mutex<HashMap<SessionKey, SessionState>>,
    capacity: usize,
}

impl Budgets {
    pub fn new(
        config: BudgetConfig,
        loop_guard: Option<LoopGuardConfig>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, BudgetConfigError> {
        config.validate()?;
        if let Some(guard) = &loop_guard {
            guard.validate()?;
        }
        let capacity = config.max_sessions.unwrap_or(DEFAULT_MAX_SESSIONS);
        Ok(Self { config, loop_guard, clock, sessions: Mutex::new(HashMap::new()), capacity })
    }

    /// The counters before each call, or the first limit a call would exceed. Counts nothing.
    pub fn peek(
        &self,
        key: &SessionKey,
        mcp_session: Option<&str>,
        calls: &[PlannedCall],
    ) -> Result<Vec<Counters>, Exceeded> {
        let now = self.clock.now_ms();
        let sessions = self.sessions.lock();
        let mut state = sessions.get(key).cloned().unwrap_or_default();
        drop(sessions);
        self.admit(&mut state, mcp_session, calls, now)
    }

    /// Checks and counts the calls in one step: all of them are admitted, or none is counted.
    pub fn reserve(
        &self,
        key: &SessionKey,
        mcp_session: Option<&str>,
        calls: &[PlannedCall],
    ) -> Result<Vec<Counters>, Exceeded> {
        let now = self.clock.now_ms();
        let mut sessions = self.sessions.lock();
        let mut state = sessions.get(key).cloned().unwrap_or_default();
        let counters = self.admit(&mut state, mcp_session, calls, now)?;
        if !sessions.contains_key(key) && sessions.len() >= self.capacity {
            evict_least_recent(&mut sessions);
        }
        sessions.insert(key.clone(), state);
        Ok(counters)
    }

    /// Applies `calls` to `state` in order, refusing at the first exceeded limit.
    fn admit(
        &self,
        state: &mut SessionState,
        mcp_session: Option<&str>,
        calls: &[PlannedCall],
        now: i64,
    ) -> Result<Vec<Counters>, Exceeded> {
        let config = &self.config;
        if let Some(window) = config.window_secs {
            if now - state.window_start_ms >= secs_ms(window) {
                state.window_start_ms = now;
                state.calls = 0;
                state.spend = 0;
                state.tools.values_mut().for_each(|t| (t.calls, t.spend) = (0, 0));
                state.mcp.clear();
            }
        } else if state.last_seen_ms == 0 {
            state.window_start_ms = now;
        }
        state.last_seen_ms = now;
        let mut counters = Vec::with_capacity(calls.len());
        for (index, call) in calls.iter().enumerate() {
            let tool_config = config.tools.get(&call.tool);
            let tool_key = if tool_config.is_some()
                || state.tools.contains_key(&call.tool)
                || state.tools.len() < MAX_TRACKED_TOOLS
            {
                call.tool.as_str()
            } else {
                OTHER_TOOLS
            };
            let tool = state.tools.get(tool_key).cloned().unwrap_or_default();
            let repeats = match (&state.last_call, &self.loop_guard) {
                (Some(last), guard) if last.fingerprint == call.fingerprint => {
                    let window = guard.and_then(|g| g.window_secs).map(secs_ms);
                    if window.is_some_and(|w| now - last.at_ms > w) { 0 } else { last.repeats }
                }
                _ => 0,
            };
            let before = Counters { calls: state.calls, tool_calls: tool.calls, spend: state.spend, repeats };
            let exceeded = |kind, description: String, step_up: bool| Exceeded {
                kind,
                call: index,
                description,
                retry_after_secs: None,
                step_up,
            };
            // Loop and rate limits hold even for approved calls; budgets may be stepped up.
            if let Some(guard) = &self.loop_guard
                && repeats >= guard.max_repeats
            {
                let text = format!(
                    "loop_guard.max_repeats={} for tool {:?}: {} identical calls in a row",
                    guard.max_repeats,
                    call.tool,
                    repeats + 1
                );
                return Err(exceeded(LimitKind::Loop, text, false));
            }
            let tool_rate = tool_config.and_then(|t| t.rate.map(|r| (r, format!("budget.tools.{}.rate", call.tool))));
            let session_rate = config.rate.map(|r| (r, "budget.rate".to_owned()));
            for (rate, (limit, name)) in [(&state.recent, session_rate), (&tool.recent, tool_rate)]
                .into_iter()
                .filter_map(|(recent, limit)| limit.map(|l| (recent, l)))
            {
                let horizon = now - secs_ms(limit.per_secs);
                let in_window: Vec<i64> = rate.iter().copied().filter(|t| *t > horizon).collect();
                if in_window.len() >= limit.calls as usize {
                    let oldest = in_window.first().copied().unwrap_or(now);
                    let wait_ms = (oldest + secs_ms(limit.per_secs) - now).max(0);
                    let text = format!("{name}={} per {}s count={}", limit.calls, limit.per_secs, in_window.len());
                    let mut refused = exceeded(LimitKind::Rate, text, false);
                    refused.retry_after_secs = Some(u64::try_from(wait_ms).unwrap_or(0).div_ceil(1000).max(1));
                    return Err(refused);
                }
            }
            if !call.approved {
                let step_up = |tool_level: bool| {
                    let on_exceed = if tool_level {
                        tool_config.and_then(|t| t.on_exceed).unwrap_or(config.on_exceed)
                    } else {
                        config.on_exceed
                    };
                    on_exceed == OnExceed::StepUp
                };
                let cost = tool_config.map_or(0, |t| t.cost);
                let mcp_calls = mcp_session.and_then(|id| state.mcp.get(id)).map_or(0, |(calls, _)| *calls);
                let checks = [
                    (config.max_calls, state.calls, 1, "budget.max_calls".to_owned(), false),
                    (
                        config.max_calls_per_mcp_session,
                        mcp_calls,
                        u64::from(mcp_session.is_some()),
                        "budget.max_calls_per_mcp_session".to_owned(),
                        false,
                    ),
                    (config.max_spend, state.spend, cost, "budget.max_spend".to_owned(), false),
                    (
                        tool_config.and_then(|t| t.max_calls),
                        tool.calls,
                        1,
                        format!("budget.tools.{}.max_calls", call.tool),
                        true,
                    ),
                ];
                for (limit, count, adds, name, tool_level) in checks {
                    if let Some(limit) = limit
                        && adds > 0
                        && count.saturating_add(adds) > limit
                    {
                        let text = format!("{name}={limit} count={count}");
                        return Err(exceeded(LimitKind::Budget, text, step_up(tool_level)));
                    }
                }
            }
            // Admitted: count it.
            let cost = tool_config.map_or(0, |t| t.cost);
            state.calls = state.calls.saturating_add(1);
            state.spend = state.spend.saturating_add(cost);
            let tool_state = state.tools.entry(tool_key.to_owned()).or_default();
            tool_state.calls = tool_state.calls.saturating_add(1);
            tool_state.spend = tool_state.spend.saturating_add(cost);
            if let Some(rate) = tool_config.and_then(|t| t.rate) {
                push_bounded(&mut tool_state.recent, now, rate.calls as usize);
            }
            if let Some(rate) = config.rate {
                push_bounded(&mut state.recent, now, rate.calls as usize);
            }
            if let Some(id) = mcp_session {
                if !state.mcp.contains_key(id) && state.mcp.len() >= MAX_MCP_SESSIONS {
                    let oldest = state.mcp.iter().min_by_key(|(_, (_, seen))| *seen).map(|(k, _)| k.clone());
                    if let Some(oldest) = oldest {
                        state.mcp.remove(&oldest);
                    }
                }
                let entry = state.mcp.entry(id.to_owned()).or_insert((0, now));
                *entry = (entry.0.saturating_add(1), now);
            }
            state.last_call = Some(LastCall { fingerprint: call.fingerprint, repeats: repeats + 1, at_ms: now });
            counters.push(before);
        }
        Ok(counters)
    }
}

fn secs_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

fn push_bounded(recent: &mut VecDeque<i64>, at: i64, bound: usize) {
    recent.push_back(at);
    while recent.len() > bound {
        recent.pop_front();
    }
}

fn evict_least_recent(sessions: &mut HashMap<SessionKey, SessionState>) {
    let oldest = sessions.iter().min_by_key(|(_, s)| s.last_seen_ms).map(|(k, _)| k.clone());
    if let Some(oldest) = oldest {
        sessions.remove(&oldest);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};

    use super::*;

    #[derive(Default)]
    struct TestClock(AtomicI64);
    impl Clock for TestClock {
        fn now_ms(&self) -> i64 {
            self.0.load(Ordering::SeqCst)
        }
    }
    impl TestClock {
        fn advance(&self, ms: i64) {
            self.0.fetch_add(ms, Ordering::SeqCst);
        }
    }

    fn key(subject: &str) -> SessionKey {
        SessionKey { agent: "spiffe://t/agent/a".into(), subject: subject.into() }
    }

    fn call(tool: &str, arguments: u8) -> PlannedCall {
        let mut fingerprint = [0u8; 32];
        fingerprint[0] = arguments;
        fingerprint[1..1 + tool.len().min(31)].copy_from_slice(&tool.as_bytes()[..tool.len().min(31)]);
        PlannedCall { tool: tool.into(), fingerprint, approved: false }
    }

    fn budgets(config: BudgetConfig, loop_guard: Option<LoopGuardConfig>) -> (Budgets, Arc<TestClock>) {
        let clock = Arc::new(TestClock(AtomicI64::new(1_000_000)));
        (Budgets::new(config, loop_guard, clock.clone()).unwrap(), clock)
    }

    fn tool_limit(tool: &str, budget: ToolBudget) -> BTreeMap<String, ToolBudget> {
        BTreeMap::from([(tool.to_owned(), budget)])
    }

    #[test]
    fn the_call_after_the_tool_budget_is_refused() {
        let config = BudgetConfig {
            tools: tool_limit("search", ToolBudget { max_calls: Some(300), ..ToolBudget::default() }),
            ..BudgetConfig::default()
        };
        let (budgets, _) = budgets(config, None);
        for n in 0..300u64 {
            let counters = budgets.reserve(&key("alice"), None, &[call("search", (n % 7) as u8)]).unwrap();
            assert_eq!(counters[0].tool_calls, n);
        }
        let refused = budgets.reserve(&key("alice"), None, &[call("search", 1)]).unwrap_err();
        assert_eq!(refused.kind, LimitKind::Budget);
        assert_eq!(refused.description, "budget.tools.search.max_calls=300 count=300");
        assert!(!refused.step_up);
        // Other tools and other subjects keep their own counts.
        assert!(budgets.reserve(&key("alice"), None, &[call("fetch", 1)]).is_ok());
        assert!(budgets.reserve(&key("bob"), None, &[call("search", 1)]).is_ok());
    }

    #[test]
    fn peeking_counts_nothing_and_refusals_consume_nothing() {
        let config = BudgetConfig { max_calls: Some(2), ..BudgetConfig::default() };
        let (budgets, _) = budgets(config, None);
        for _ in 0..5 {
            assert!(budgets.peek(&key("a"), None, &[call("t", 1)]).is_ok());
        }
        budgets.reserve(&key("a"), None, &[call("t", 1)]).unwrap();
        // A batch of two does not fit in the one remaining call: neither is counted.
        let refused = budgets.reserve(&key("a"), None, &[call("t", 2), call("t", 3)]).unwrap_err();
        assert_eq!(refused.call, 1);
        assert_eq!(budgets.reserve(&key("a"), None, &[call("t", 4)]).unwrap()[0].calls, 1);
        assert!(budgets.reserve(&key("a"), None, &[call("t", 5)]).is_err());
    }

    #[test]
    fn concurrent_calls_never_exceed_the_budget() {
        let config = BudgetConfig { max_calls: Some(100), ..BudgetConfig::default() };
        let (budgets, _) = budgets(config, None);
        let budgets = Arc::new(budgets);
        let admitted = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for thread in 0..8u8 {
                let budgets = &budgets;
                let admitted = &admitted;
                scope.spawn(move || {
                    for n in 0..50u8 {
                        if budgets
                            .reserve(&key("a"), None, &[call("t", thread.wrapping_mul(50).wrapping_add(n))])
                            .is_ok()
                        {
                            admitted.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.load(Ordering::SeqCst), 100);
    }

    #[test]
    fn spend_adds_each_tools_cost() {
        let config = BudgetConfig {
            max_spend: Some(10),
            tools: tool_limit("buy", ToolBudget { cost: 4, ..ToolBudget::default() }),
            ..BudgetConfig::default()
        };
        let (budgets, _) = budgets(config, None);
        budgets.reserve(&key("a"), None, &[call("buy", 1)]).unwrap();
        let counters = budgets.reserve(&key("a"), None, &[call("buy", 2)]).unwrap();
        assert_eq!(counters[0].spend, 4);
        let refused = budgets.reserve(&key("a"), None, &[call("buy", 3)]).unwrap_err();
        assert_eq!(refused.description, "budget.max_spend=10 count=8");
        // Free tools still pass.
        assert!(budgets.reserve(&key("a"), None, &[call("look", 1)]).is_ok());
    }

    #[test]
    fn step_up_budgets_let_approved_calls_through() {
        let config = BudgetConfig { max_calls: Some(1), on_exceed: OnExceed::StepUp, ..BudgetConfig::default() };
        let (budgets, _) = budgets(config, None);
        budgets.reserve(&key("a"), None, &[call("t", 1)]).unwrap();
        let refused = budgets.reserve(&key("a"), None, &[call("t", 2)]).unwrap_err();
        assert!(refused.step_up);
        let mut approved = call("t", 2);
        approved.approved = true;
        assert!(budgets.reserve(&key("a"), None, &[approved]).is_ok());
    }

    #[test]
    fn a_tool_can_override_on_exceed() {
        let config = BudgetConfig {
            tools: tool_limit(
                "pay",
                ToolBudget { max_calls: Some(0), on_exceed: Some(OnExceed::StepUp), ..ToolBudget::default() },
            ),
            ..BudgetConfig::default()
        };
        let (budgets, _) = budgets(config, None);
        assert!(budgets.reserve(&key("a"), None, &[call("pay", 1)]).unwrap_err().step_up);
    }

    #[test]
    fn the_rate_limit_says_when_to_retry() {
        let config = BudgetConfig { rate: Some(RateConfig { calls: 2, per_secs: 10 }), ..BudgetConfig::default() };
        let (budgets, clock) = budgets(config, None);
        budgets.reserve(&key("a"), None, &[call("t", 1)]).unwrap();
        clock.advance(3_000);
        budgets.reserve(&key("a"), None, &[call("t", 2)]).unwrap();
        let refused = budgets.reserve(&key("a"), None, &[call("t", 3)]).unwrap_err();
        assert_eq!((refused.kind, refused.retry_after_secs), (LimitKind::Rate, Some(7)));
        assert_eq!(refused.description, "budget.rate=2 per 10s count=2");
        clock.advance(7_000);
        assert!(budgets.reserve(&key("a"), None, &[call("t", 3)]).is_ok(), "the first call left the window");
        // Approval does not lift a rate limit.
        let mut approved = call("t", 4);
        approved.approved = true;
        assert_eq!(budgets.reserve(&key("a"), None, &[approved]).unwrap_err().kind, LimitKind::Rate);
    }

    #[test]
    fn a_tool_rate_limits_only_that_tool() {
        let config = BudgetConfig {
            tools: tool_limit(
                "t",
                ToolBudget { rate: Some(RateConfig { calls: 1, per_secs: 60 }), ..ToolBudget::default() },
            ),
            ..BudgetConfig::default()
        };
        let (budgets, _) = budgets(config, None);
        budgets.reserve(&key("a"), None, &[call("t", 1)]).unwrap();
        assert_eq!(budgets.reserve(&key("a"), None, &[call("t", 2)]).unwrap_err().retry_after_secs, Some(60));
        assert!(budgets.reserve(&key("a"), None, &[call("u", 1)]).is_ok());
    }

    #[test]
    fn the_loop_guard_stops_identical_runs() {
        let guard = LoopGuardConfig { max_repeats: 3, window_secs: Some(60) };
        let (budgets, clock) = budgets(BudgetConfig::default(), Some(guard));
        for expected_repeats in 0..3 {
            assert_eq!(budgets.reserve(&key("a"), None, &[call("t", 1)]).unwrap()[0].repeats, expected_repeats);
        }
        let refused = budgets.reserve(&key("a"), None, &[call("t", 1)]).unwrap_err();
        assert_eq!(refused.kind, LimitKind::Loop);
        assert!(refused.description.contains("4 identical calls"), "{}", refused.description);
        // Other arguments break the run; the same call is then allowed again.
        budgets.reserve(&key("a"), None, &[call("t", 2)]).unwrap();
        assert!(budgets.reserve(&key("a"), None, &[call("t", 1)]).is_ok());
        // A run also ends after the window.
        budgets.reserve(&key("a"), None, &[call("t", 1)]).unwrap();
        budgets.reserve(&key("a"), None, &[call("t", 1)]).unwrap();
        assert!(budgets.reserve(&key("a"), None, &[call("t", 1)]).is_err());
        clock.advance(61_000);
        assert!(budgets.reserve(&key("a"), None, &[call("t", 1)]).is_ok());
    }

    #[test]
    fn a_window_restarts_the_counters() {
        let config = BudgetConfig { max_calls: Some(1), window_secs: Some(60), ..BudgetConfig::default() };
        let (budgets, clock) = budgets(config, None);
        budgets.reserve(&key("a"), None, &[call("t", 1)]).unwrap();
        assert!(budgets.reserve(&key("a"), None, &[call("t", 2)]).is_err());
        clock.advance(60_000);
        assert!(budgets.reserve(&key("a"), None, &[call("t", 2)]).is_ok());
    }

    #[test]
    fn new_mcp_sessions_do_not_reset_the_principals_budget() {
        let config = BudgetConfig { max_calls: Some(3), max_calls_per_mcp_session: Some(2), ..BudgetConfig::default() };
        let (budgets, _) = budgets(config, None);
        budgets.reserve(&key("a"), Some("s1"), &[call("t", 1)]).unwrap();
        budgets.reserve(&key("a"), Some("s1"), &[call("t", 2)]).unwrap();
        let refused = budgets.reserve(&key("a"), Some("s1"), &[call("t", 3)]).unwrap_err();
        assert_eq!(refused.description, "budget.max_calls_per_mcp_session=2 count=2");
        budgets.reserve(&key("a"), Some("s2"), &[call("t", 3)]).unwrap();
        let refused = budgets.reserve(&key("a"), Some("s3"), &[call("t", 4)]).unwrap_err();
        assert_eq!(refused.description, "budget.max_calls=3 count=3");
    }

    #[test]
    fn a_full_map_evicts_the_least_recently_active() {
        let config = BudgetConfig { max_calls: Some(1), max_sessions: Some(2), ..BudgetConfig::default() };
        let (budgets, clock) = budgets(config, None);
        budgets.reserve(&key("a"), None, &[call("t", 1)]).unwrap();
        clock.advance(1);
        budgets.reserve(&key("b"), None, &[call("t", 1)]).unwrap();
        clock.advance(1);
        budgets.reserve(&key("c"), None, &[call("t", 1)]).unwrap();
        assert_eq!(budgets.sessions.lock().len(), 2);
        assert!(budgets.reserve(&key("b"), None, &[call("t", 1)]).is_err(), "b is still tracked");
        assert!(!budgets.sessions.lock().contains_key(&key("a")), "a was the least recent");
    }

    #[test]
    fn bad_limits_are_refused() {
        let clock: Arc<dyn Clock> = Arc::new(TestClock::default());
        let rate = BudgetConfig { rate: Some(RateConfig { calls: 0, per_secs: 1 }), ..BudgetConfig::default() };
        assert!(matches!(Budgets::new(rate, None, clock.clone()), Err(BudgetConfigError::Rate(_))));
        let tool_rate = BudgetConfig {
            tools: tool_limit(
                "x",
                ToolBudget { rate: Some(RateConfig { calls: 1, per_secs: 0 }), ..ToolBudget::default() },
            ),
            ..BudgetConfig::default()
        };
        assert!(matches!(Budgets::new(tool_rate, None, clock.clone()), Err(BudgetConfigError::Rate(_))));
        let guard = LoopGuardConfig { max_repeats: 0, window_secs: None };
        assert!(matches!(
            Budgets::new(BudgetConfig::default(), Some(guard), clock.clone()),
            Err(BudgetConfigError::Repeats)
        ));
        let window = BudgetConfig { window_secs: Some(0), ..BudgetConfig::default() };
        assert!(matches!(Budgets::new(window, None, clock.clone()), Err(BudgetConfigError::Window)));
        let sessions = BudgetConfig { max_sessions: Some(0), ..BudgetConfig::default() };
        assert!(matches!(Budgets::new(sessions, None, clock), Err(BudgetConfigError::Sessions)));
    }
}
