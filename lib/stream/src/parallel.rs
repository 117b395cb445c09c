//! Order-preserving parallel work: jobs are produced in order, run on a pool
//! of threads, and their results consumed in the order the jobs were made.
//!
//! At most [`MAX_IN_FLIGHT`] jobs are in flight at once, so memory stays
//! bounded by that count times the largest job, whatever the input size.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// The most jobs in flight (queued, running or waiting to be consumed in
/// order) at once, whatever the number of threads.
pub const MAX_IN_FLIGHT: usize = 32;

/// The number of worker threads to use: one per available core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Runs `produce`, which hands jobs to its callback in order; each job goes
/// through `work` on one of `threads` workers; `consume` receives the results
/// in job order.
///
/// The callback given to `produce` returns false once the pipeline has
/// stopped (the consumer failed); `produce` should then return. The first
/// failure in job order wins: a consumer error before a producer error.
pub fn run_ordered<J, O, P, W, C>(threads: usize, produce: P, work: W, mut consume: C) -> Result<()>
where
    J: Send,
    O: Send,
    P: FnOnce(&mut dyn FnMut(J) -> bool) -> Result<()>,
    W: Fn(J) -> Result<O> + Sync,
    C: FnMut(O) -> Result<()> + Send,
{
    let threads = threads.max(1);
    let in_flight = (threads * 4).min(MAX_IN_FLIGHT);
    std::thread::scope(|scope| {
        let (job_tx, job_rx) = crossbeam_channel::bounded::<(u64, J)>(in_flight);
        let (result_tx, result_rx) = crossbeam_channel::bounded::<(u64, Result<O>)>(in_flight);
        // One token per job in flight; the consumer returns a token per result it takes in order.
        let (token_tx, token_rx) = crossbeam_channel::bounded::<()>(in_flight);
        for _ in 0..threads {
            let job_rx = job_rx.clone();
            let result_tx = result_tx.clone();
            let work = &work;
            scope.spawn(move || {
                for (index, job) in job_rx {
                    // A panic must not leave a hole in the order the consumer waits on forever.
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(job)))
                        .unwrap_or_else(|_| Err(Error::other("internal error: a worker thread panicked")));
                    if result_tx.send((index, result)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(job_rx);
        drop(result_tx);
        let consumer = scope.spawn(move || -> Result<()> {
            let mut pending = BTreeMap::new();
            let mut next = 0u64;
            for (index, result) in result_rx {
                pending.insert(index, result);
                while let Some(result) = pending.remove(&next) {
                    next += 1;
                    let _ = token_rx.recv();
                    consume(result?)?;
                }
            }
            Ok(())
        });
        let mut index = 0u64;
        let produced = produce(&mut |job| {
            if token_tx.send(()).is_err() || job_tx.send((index, job)).is_err() {
                return false;
            }
            index += 1;
            true
        });
        drop(job_tx);
        drop(token_tx);
        let consumed =
            consumer.join().unwrap_or_else(|_| Err(Error::other("internal error: the output thread panicked")));
        consumed.and(produced)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_arrive_in_job_order() {
        let mut seen = Vec::new();
        run_ordered(
            4,
            |send| {
                for i in 0..1000u64 {
                    if !send(i) {
                        break;
                    }
                }
                Ok(())
            },
            |i| {
                if i % 7 == 0 {
                    std::thread::sleep(std::time::Duration::from_micros(50));
                }
                Ok(i * 2)
            },
            |v| {
                seen.push(v);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(seen, (0..1000u64).map(|i| i * 2).collect::<Vec<_>>());
    }

    #[test]
    fn first_failure_in_order_wins_and_stops_the_producer() {
        let mut consumed = 0;
        let mut sent = 0;
        let err = run_ordered(
            2,
            |send| {
                for i in 0..1_000_000u64 {
                    if !send(i) {
                        return Ok(());
                    }
                    sent += 1;
                }
                Err(Error::other("producer ran to the end"))
            },
            |i| {
                if i == 10 {
                    Err(Error::integrity("job 10 failed"))
                } else {
                    Ok(i)
                }
            },
            |_| {
                consumed += 1;
                Ok(())
            },
        )
        .unwrap_err();
        assert_eq!(err.message(), "job 10 failed");
        assert_eq!(consumed, 10);
        assert!(sent <= 11 + MAX_IN_FLIGHT, "the producer went on to {sent} jobs");
    }

    #[test]
    fn a_panicking_job_is_an_error_not_a_hang() {
        let err = run_ordered(
            2,
            |send| {
                for i in 0..100u64 {
                    if !send(i) {
                        break;
                    }
                }
                Ok(())
            },
            |i| if i == 3 { panic!("job 3 panics") } else { Ok(i) },
            |_| Ok(()),
        )
        .unwrap_err();
        assert!(err.message().contains("panicked"));
    }
}
