//! Places for long-lived streams (gRPC watches, open data's change streams): at most so
//! many open in all, and at most so many per client, so that no one client can take
//! every place and shut the others out.

use std::{collections::HashMap, sync::Arc};

use parking_lot::Mutex;

/// Streams open, in all and per client; cheap to clone (clones share the counts).
#[derive(Clone)]
pub struct Places {
    counts: Arc<Mutex<Counts>>,
    max: usize,
    max_per_client: usize,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_client: HashMap<String, usize>,
}

/// Why a stream found no place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The server holds its most streams (the number).
    Server(usize),
    /// This client holds its most streams (the number).
    Client(usize),
}

/// One open stream's place; given back when dropped.
pub struct Place {
    counts: Arc<Mutex<Counts>>,
    client: String,
}

impl Places {
    /// At most `max` streams in all and `max_per_client` for any one client.
    pub fn new(max: usize, max_per_client: usize) -> Self {
        Self {
            counts: Arc::default(),
            max,
            max_per_client,
        }
    }

    /// A place for one more stream of `client` (an operator, a driver, or an address
    /// key), or which cap it is over.
    pub fn take(&self, client: String) -> Result<Place, Full> {
        let mut counts = self.counts.lock();
        if counts.total >= self.max {
            return Err(Full::Server(self.max));
        }
        let mine = counts.per_client.entry(client.clone()).or_default();
        if *mine >= self.max_per_client {
            return Err(Full::Client(self.max_per_client));
        }
        *mine += 1;
        counts.total += 1;
        Ok(Place {
            counts: self.counts.clone(),
            client,
        })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut counts = self.counts.lock();
        counts.total -= 1;
        if let Some(n) = counts.per_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                // A client with no stream leaves no entry: the map holds only clients
                // with streams open, however many have come and gone.
                counts.per_client.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_and_the_server_have_their_cap_and_places_come_back() {
        let places = Places::new(3, 2);
        let a1 = places.take("a".into()).unwrap();
        let _a2 = places.take("a".into()).unwrap();
        assert_eq!(places.take("a".into()).err(), Some(Full::Client(2)));
        let _b1 = places.take("b".into()).unwrap();
        assert_eq!(places.take("c".into()).err(), Some(Full::Server(3)));
        drop(a1);
        let _a3 = places.take("a".into()).unwrap();
        assert_eq!(places.counts.lock().per_client.len(), 2);
    }

    #[test]
    fn a_client_that_closed_every_stream_leaves_no_entry() {
        let places = Places::new(10, 10);
        drop(places.take("gone".into()).unwrap());
        assert!(places.counts.lock().per_client.is_empty());
        assert_eq!(places.counts.lock().total, 0);
    }
}
