//! sockgate patch: the bounded, single-consumer packet queue of a socket.
//!
//! It keeps the subset of `tokio::sync::mpsc`'s API (and its error types) the
//! engine uses, with the same semantics: a fixed capacity shared by queued
//! items and outstanding permits, a receiver-side `close` after which sends
//! fail and queued items can still be received, `closed()` on the sender.
//! tokio's channel keeps about 800 bytes of shared state per channel (cache
//! padded counters, a first block of 32 slots); an idle socket's queue is
//! empty almost all of its life, and this one costs a small `Arc` and, only
//! while items are queued, a `VecDeque`.

use std::{
    collections::VecDeque,
    pin::pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
};

use futures_util::task::AtomicWaker;
use tokio::sync::Notify;
pub use tokio::sync::mpsc::error::{SendError, TryRecvError, TrySendError};

/// A queue that held more than this many items gives its buffer back once drained.
const SHRINK_ABOVE: usize = 16;

struct State<T> {
    items: VecDeque<T>,
    /// Permits handed out and not yet used or dropped.
    reserved: usize,
    closed: bool,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    capacity: usize,
    rx_waker: AtomicWaker,
    /// Capacity became free, or the queue closed.
    space: Notify,
    /// The queue closed.
    closed: Notify,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // No code path panics while holding the lock; a poisoned lock still
        // holds a consistent queue.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn close(&self) {
        self.lock().closed = true;
        self.space.notify_waiters();
        self.closed.notify_waiters();
        self.rx_waker.wake();
    }
}

/// Creates a queue of `capacity` items.
pub(crate) fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    assert!(capacity > 0, "the packet queue requires a capacity > 0");
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            reserved: 0,
            closed: false,
        }),
        capacity,
        rx_waker: AtomicWaker::new(),
        space: Notify::new(),
        closed: Notify::new(),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

pub(crate) struct Sender<T> {
    shared: Arc<Shared<T>>,
}

pub(crate) struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

/// A place in the queue, held until used or dropped.
pub(crate) struct Permit<'a, T> {
    shared: &'a Shared<T>,
}

impl<T> Sender<T> {
    pub(crate) fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        let mut state = self.shared.lock();
        if state.closed {
            return Err(TrySendError::Closed(item));
        }
        if state.items.len() + state.reserved >= self.shared.capacity {
            return Err(TrySendError::Full(item));
        }
        state.items.push_back(item);
        drop(state);
        self.shared.rx_waker.wake();
        Ok(())
    }

    pub(crate) fn try_reserve(&self) -> Result<Permit<'_, T>, TrySendError<()>> {
        let mut state = self.shared.lock();
        if state.closed {
            return Err(TrySendError::Closed(()));
        }
        if state.items.len() + state.reserved >= self.shared.capacity {
            return Err(TrySendError::Full(()));
        }
        state.reserved += 1;
        Ok(Permit {
            shared: &self.shared,
        })
    }

    /// Waits for capacity, then queues `item`.
    pub(crate) async fn send(&self, mut item: T) -> Result<(), SendError<T>> {
        loop {
            let mut space = pin!(self.shared.space.notified());
            space.as_mut().enable();
            match self.try_send(item) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(back)) => return Err(SendError(back)),
                Err(TrySendError::Full(back)) => item = back,
            }
            space.await;
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }

    /// sockgate patch: resolves once nothing is queued (every item taken by
    /// the receiver) or the queue closed.
    pub(crate) async fn drained(&self) {
        loop {
            let mut space = pin!(self.shared.space.notified());
            space.as_mut().enable();
            {
                let state = self.shared.lock();
                if state.closed || state.items.is_empty() {
                    return;
                }
            }
            space.await;
        }
    }

    /// Resolves once the receiver closed the queue or was dropped.
    pub(crate) async fn closed(&self) {
        loop {
            let mut closed = pin!(self.shared.closed.notified());
            closed.as_mut().enable();
            if self.is_closed() {
                return;
            }
            closed.await;
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        // The socket owns the only sender: the receiver ends with it.
        self.shared.close();
    }
}

impl<T> Permit<'_, T> {
    pub(crate) fn send(self, item: T) {
        {
            let mut state = self.shared.lock();
            state.reserved -= 1;
            state.items.push_back(item);
        }
        self.shared.rx_waker.wake();
        std::mem::forget(self);
    }
}

impl<T> Drop for Permit<'_, T> {
    fn drop(&mut self) {
        self.shared.lock().reserved -= 1;
        self.shared.space.notify_waiters();
    }
}

impl<T> Receiver<T> {
    fn pop(&mut self) -> Option<T> {
        let mut state = self.shared.lock();
        let item = state.items.pop_front()?;
        if state.items.is_empty() && state.items.capacity() > SHRINK_ABOVE {
            state.items = VecDeque::new();
        }
        drop(state);
        self.shared.space.notify_waiters();
        Some(item)
    }

    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        if let Some(item) = self.pop() {
            return Poll::Ready(Some(item));
        }
        // Registered before the second look, so a send in between wakes us.
        self.shared.rx_waker.register(cx.waker());
        if let Some(item) = self.pop() {
            return Poll::Ready(Some(item));
        }
        if self.shared.lock().closed {
            return Poll::Ready(None);
        }
        Poll::Pending
    }

    /// The next item; `None` once the queue is closed and drained.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    pub(crate) fn try_recv(&mut self) -> Result<T, TryRecvError> {
        match self.pop() {
            Some(item) => Ok(item),
            None if self.shared.lock().closed => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// Refuses further sends; queued items can still be received.
    pub(crate) fn close(&mut self) {
        self.shared.close();
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.shared.close();
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").finish_non_exhaustive()
    }
}

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn drained_waits_for_the_receiver_to_take_everything() {
        let (tx, mut rx) = channel(4);
        tx.drained().await;
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        let mut drained = std::pin::pin!(tx.drained());
        // One poll each, with a waker that does nothing: the timeout below
        // polls it again with the task's own.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(drained.as_mut().poll(&mut cx).is_pending());
        assert_eq!(rx.recv().await, Some(1));
        assert!(drained.as_mut().poll(&mut cx).is_pending());
        assert_eq!(rx.recv().await, Some(2));
        tokio::time::timeout(Duration::from_secs(1), drained)
            .await
            .unwrap();
    }

    #[test]
    fn capacity_counts_queued_items_and_permits() {
        let (tx, mut rx) = channel(2);
        let permit = tx.try_reserve().unwrap();
        tx.try_send(1).unwrap();
        assert!(matches!(tx.try_send(2), Err(TrySendError::Full(2))));
        assert!(matches!(tx.try_reserve(), Err(TrySendError::Full(()))));
        drop(permit);
        tx.try_reserve().unwrap().send(3);
        assert_eq!(rx.try_recv().unwrap(), 1);
        assert_eq!(rx.try_recv().unwrap(), 3);
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    }

    #[test]
    fn order_is_kept() {
        let (tx, mut rx) = channel(100);
        for i in 0..50 {
            if i % 2 == 0 {
                tx.try_send(i).unwrap();
            } else {
                tx.try_reserve().unwrap().send(i);
            }
        }
        let got: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(got, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn close_refuses_sends_but_keeps_queued_items() {
        let (tx, mut rx) = channel(4);
        tx.try_send(1).unwrap();
        rx.close();
        assert!(tx.is_closed());
        assert!(matches!(tx.try_send(2), Err(TrySendError::Closed(2))));
        assert!(matches!(tx.try_reserve(), Err(TrySendError::Closed(()))));
        assert_eq!(rx.try_recv().unwrap(), 1);
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Disconnected)));
    }

    #[tokio::test]
    async fn recv_wakes_on_send_and_ends_on_close() {
        let (tx, mut rx) = channel(4);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(v) = rx.recv().await {
                got.push(v);
            }
            got
        });
        for i in 0..3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            tx.try_send(i).unwrap();
        }
        drop(tx);
        assert_eq!(reader.await.unwrap(), vec![0, 1, 2]);
    }

    #[tokio::test]
    async fn send_waits_for_capacity() {
        let (tx, mut rx) = channel(1);
        tx.try_send(1).unwrap();
        let tx = Arc::new(tx);
        let sender = {
            let tx = tx.clone();
            tokio::spawn(async move { tx.send(2).await.is_ok() })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!sender.is_finished(), "the queue is full");
        assert_eq!(rx.recv().await, Some(1));
        assert!(sender.await.unwrap());
        assert_eq!(rx.recv().await, Some(2));
    }

    #[tokio::test]
    async fn closed_resolves_when_the_receiver_closes() {
        let (tx, mut rx) = channel::<u8>(1);
        let waiter = tokio::spawn(async move { tx.closed().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        rx.close();
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("closed() should resolve")
            .unwrap();
    }

    #[test]
    fn a_drained_burst_gives_its_buffer_back() {
        let (tx, mut rx) = channel(128);
        for i in 0..100 {
            tx.try_send(i).unwrap();
        }
        while rx.try_recv().is_ok() {}
        assert_eq!(tx.shared.lock().items.capacity(), 0);
    }
}
