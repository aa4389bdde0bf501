import Synchronization
import Tenancy

/// One token bucket per tenant, so a tenant's flood is refused at the gateway before it can
/// take the others' share of the producer. A request of `n` events is admitted while the
/// bucket holds at least `min(n, burst)` tokens and takes `n`; the balance may go negative,
/// which keeps large batches possible while holding the tenant to its rate on average.
public final class TenantRateLimiter: Sendable {
    private struct Bucket {
        var tokens: Double
        var updated: ContinuousClock.Instant
    }

    private let buckets = Mutex<[TenantID: Bucket]>([:])

    public init() {}

    /// Takes `count` tokens from the tenant's bucket; nil when admitted, otherwise how long to
    /// wait before the request can be admitted.
    public func admit(_ count: Int, tenant: TenantID, limit: RateLimit, now: ContinuousClock.Instant = .now) -> Duration? {
        buckets.withLock { buckets in
            var bucket = buckets[tenant] ?? Bucket(tokens: limit.burst, updated: now)
            let since = bucket.updated.duration(to: now).components
            let elapsed = Double(since.seconds) + Double(since.attoseconds) / 1e18
            bucket.tokens = min(limit.burst, bucket.tokens + max(0, elapsed) * limit.eventsPerSecond)
            bucket.updated = now
            let needed = min(Double(count), limit.burst)
            defer { buckets[tenant] = bucket }
            guard bucket.tokens >= needed else {
                return .seconds((needed - bucket.tokens) / limit.eventsPerSecond)
            }
            bucket.tokens -= Double(count)
            return nil
        }
    }
}
