//! Bounded password hashing: a few long-lived argon2 worker threads behind a bounded queue.
//!
//! Each argon2 run needs ~19 MiB; run on the unbounded blocking pool, a flood of guesses grew
//! the auth service by gigabytes. Here at most `max_concurrent` runs happen at once, at most
//! `max_queued` wait, and anything beyond is refused at once. Each worker allocates its argon2
//! memory once and reuses it: freeing and reallocating 19 MiB blocks from many threads
//! fragments the allocator's arenas, which kept growing the process even with few workers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use portcullis_config::PasswordHashingSettings;
use portcullis_pki::Secret;

use crate::error::AuthError;

/// A worker's argon2 memory, reused for every run.
type Memory = Vec<Block>;
type Job = Box<dyn FnOnce(&mut Memory) + Send>;

/// What a caller refused for a full queue is told.
pub const BUSY_MESSAGE: &str = "too many login attempts in progress; try again later";

/// Stored hashes asking for more memory than this are refused rather than allocated (they
/// can only come from a tampered database: this service writes the default parameters).
const MAX_MEMORY_KIB: u32 = 256 * 1024;

/// The worker threads and their queue.
pub struct PasswordPool {
    jobs: SyncSender<Job>,
    /// Hash of a random password, made at start with the same parameters as real ones: logins
    /// of unknown users are checked against it, so they cost the same as real ones.
    dummy_hash: String,
    /// argon2 runs done (hash or verify), for tests and metrics.
    runs: Arc<AtomicU64>,
}

impl std::fmt::Debug for PasswordPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordPool").field("runs", &self.runs()).finish_non_exhaustive()
    }
}

fn worker(jobs: Arc<Mutex<Receiver<Job>>>) {
    let mut memory: Memory = vec![Block::default(); Params::DEFAULT.block_count()];
    loop {
        // The guard is dropped before the job runs, so the other workers can take jobs.
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(&mut memory),
            // The pool is gone.
            Err(_) => return,
        }
    }
}

/// Runs argon2 into `out` with `memory`, growing it only for non-default parameters.
fn argon2_into(
    argon: &Argon2<'_>,
    params: &Params,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
    memory: &mut Memory,
) -> Result<(), AuthError> {
    if memory.len() < params.block_count() {
        memory.resize(params.block_count(), Block::default());
    }
    argon
        .hash_password_into_with_memory(password, salt, out, &mut memory[..])
        .map_err(|e| AuthError::Internal(format!("argon2: {e}")))
}

/// An argon2id hash (PHC string) of `password` with the default parameters.
fn hash_with(password: &[u8], memory: &mut Memory) -> Result<String, AuthError> {
    let bad = |e: argon2::password_hash::Error| AuthError::Internal(format!("hashing the password: {e}"));
    let salt = SaltString::encode_b64(&portcullis_pki::random_bytes::<16>()?).map_err(bad)?;
    let mut raw_salt = [0u8; 64];
    let raw_salt = salt.decode_b64(&mut raw_salt).map_err(bad)?;
    let params = Params::DEFAULT;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    argon2_into(&argon, &params, password, raw_salt, &mut out, memory)?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(bad)?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(bad)?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the PHC string `stored` (compared in constant time).
fn verify_with(password: &[u8], stored: &str, memory: &mut Memory) -> Result<bool, AuthError> {
    let corrupt = |e: String| AuthError::Internal(format!("a stored password hash is corrupt: {e}"));
    let phc = PasswordHash::new(stored).map_err(|e| corrupt(e.to_string()))?;
    let algorithm = Algorithm::try_from(phc.algorithm).map_err(|e| corrupt(e.to_string()))?;
    let version = match phc.version {
        Some(v) => Version::try_from(v).map_err(|e| corrupt(e.to_string()))?,
        None => Version::default(),
    };
    let params = Params::try_from(&phc).map_err(|e| corrupt(e.to_string()))?;
    if params.m_cost() > MAX_MEMORY_KIB {
        return Err(corrupt(format!("it asks for {} KiB of memory", params.m_cost())));
    }
    let (Some(salt), Some(expected)) = (phc.salt, phc.hash) else {
        return Err(corrupt("no salt or no hash".into()));
    };
    let mut raw_salt = [0u8; 64];
    let raw_salt = salt.decode_b64(&mut raw_salt).map_err(|e| corrupt(e.to_string()))?;
    let mut out = vec![0u8; expected.len()];
    let argon = Argon2::new(algorithm, version, params.clone());
    argon2_into(&argon, &params, password, raw_salt, &mut out, memory)?;
    let computed = Output::new(&out).map_err(|e| corrupt(e.to_string()))?;
    // `Output`'s equality is constant-time.
    Ok(computed == expected)
}

impl PasswordPool {
    /// Starts the workers and makes the dummy hash on one of them.
    pub fn start(settings: PasswordHashingSettings) -> Result<Self, AuthError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(settings.max_queued);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..settings.max_concurrent.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || worker(rx))
                .map_err(|e| AuthError::io("starting a password hashing thread", e))?;
        }
        let mut pool = PasswordPool { jobs: tx, dummy_hash: String::new(), runs: Arc::new(AtomicU64::new(0)) };
        // Blocking send: at start the queue is empty, and a rendezvous queue (0) still works.
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
        let random = portcullis_pki::random_bytes::<32>()?;
        pool.jobs
            .send(Box::new(move |m: &mut Memory| {
                let _ = done_tx.send(hash_with(&random, m));
            }))
            .map_err(|_| AuthError::Internal("the password hashing workers have stopped".into()))?;
        pool.dummy_hash = done_rx
            .recv()
            .map_err(|_| AuthError::Internal("a password hashing worker stopped mid-hash".into()))??;
        Ok(pool)
    }

    /// argon2 runs done so far.
    pub fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    /// Runs `f` on a worker and waits for it; refuses at once when the queue is full.
    fn run<R: Send + 'static>(&self, f: impl FnOnce(&mut Memory) -> R + Send + 'static) -> Result<R, AuthError> {
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
        let runs = self.runs.clone();
        let job: Job = Box::new(move |memory: &mut Memory| {
            let r = f(memory);
            runs.fetch_add(1, Ordering::Relaxed);
            // The caller may have gone; nothing to do then.
            let _ = done_tx.send(r);
        });
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(AuthError::TooManyRequests {
                    message: BUSY_MESSAGE.into(),
                    retry_after: Duration::from_secs(1),
                });
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(AuthError::Internal("the password hashing workers have stopped".into()));
            }
        }
        done_rx
            .recv()
            .map_err(|_| AuthError::Internal("a password hashing worker stopped mid-hash".into()))
    }

    /// An argon2id hash of `password` (PHC string).
    pub fn hash(&self, password: &Secret<String>) -> Result<String, AuthError> {
        let password = password.clone();
        self.run(move |m| hash_with(password.expose().as_bytes(), m))?
    }

    /// Whether `password` matches `stored`; with no stored hash (unknown user, no password
    /// set) the dummy hash is checked instead, for the same cost, and the answer is false.
    pub fn verify(&self, password: &Secret<String>, stored: Option<String>) -> Result<bool, AuthError> {
        let known = stored.is_some();
        let hash = stored.unwrap_or_else(|| self.dummy_hash.clone());
        let password = password.clone();
        let matches = self.run(move |m| verify_with(password.expose().as_bytes(), &hash, m))??;
        Ok(known && matches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(max_concurrent: usize, max_queued: usize) -> PasswordPool {
        PasswordPool::start(PasswordHashingSettings { max_concurrent, max_queued }).unwrap()
    }

    #[test]
    fn hash_and_verify() {
        let p = pool(1, 4);
        let h = p.hash(&Secret::new("correct horse".into())).unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(p.verify(&Secret::new("correct horse".into()), Some(h.clone())).unwrap());
        assert!(!p.verify(&Secret::new("wrong".into()), Some(h)).unwrap());
        // No stored hash: false, but argon2 still ran (the dummy hash).
        let before = p.runs();
        assert!(!p.verify(&Secret::new("anything".into()), None).unwrap());
        assert_eq!(p.runs(), before + 1, "the dummy path must run argon2");
    }

    #[test]
    fn hashes_match_the_argon2_crates_own() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let p = pool(1, 1);
        // Stored before this pool existed: made by `Argon2::default().hash_password`.
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let old = Argon2::default().hash_password(b"old-password", &salt).unwrap().to_string();
        assert!(p.verify(&Secret::new("old-password".into()), Some(old.clone())).unwrap());
        assert!(!p.verify(&Secret::new("old-passwore".into()), Some(old)).unwrap());
        // And what the pool makes, the crate accepts.
        let new = p.hash(&Secret::new("new-password".into())).unwrap();
        let parsed = PasswordHash::new(&new).unwrap();
        assert!(Argon2::default().verify_password(b"new-password", &parsed).is_ok());
        let huge = "$argon2id$v=19$m=4194304,t=2,p=1$MDEyMzQ1Njc4OWFiY2RlZg$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let e = p.verify(&Secret::new("x".into()), Some(huge.into())).unwrap_err().to_string();
        assert!(e.contains("corrupt") && e.contains("KiB"), "{e}");
    }

    #[test]
    fn the_dummy_hash_has_the_real_parameters() {
        let p = pool(1, 1);
        let real = p.hash(&Secret::new("x-password".into())).unwrap();
        let params = |h: &str| h.rsplitn(3, '$').nth(2).map(str::to_string);
        assert_eq!(params(&p.dummy_hash), params(&real), "{} vs {real}", p.dummy_hash);
    }

    #[test]
    fn a_full_queue_refuses_at_once() {
        // One worker, no waiting room: of many simultaneous callers most are refused quickly.
        let p = Arc::new(pool(1, 0));
        let started = std::time::Instant::now();
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let p = p.clone();
                std::thread::spawn(move || p.verify(&Secret::new("guess".into()), None))
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let busy = results
            .iter()
            .filter(|r| matches!(r, Err(AuthError::TooManyRequests { message, .. }) if message == BUSY_MESSAGE))
            .count();
        assert!(busy >= 1, "some callers must be refused: {results:?}");
        assert!(results.iter().all(|r| matches!(r, Ok(false) | Err(AuthError::TooManyRequests { .. }))), "{results:?}");
        // Never more than one hash at a time, so 8 callers did not take 8 hash times.
        assert!((p.runs() as usize) < 8 && started.elapsed() < Duration::from_secs(30));
    }
}
