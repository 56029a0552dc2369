//! BPE merging of one pre-token: repeatedly merge the adjacent pair with the lowest merge rank
//! (leftmost first among equal ranks), like the HF `tokenizers` BPE model (`Word::merge_all`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// (left id, right id) → (rank, merged id).
pub(crate) type MergeMap = HashMap<(u32, u32), (u32, u32)>;

#[derive(Clone, Copy)]
struct Symbol {
    id: u32,
    prev: usize,
    next: usize,
    alive: bool,
}

const NONE: usize = usize::MAX;

/// Merges `ids` (the initial one-byte symbols) in place. O(n log n).
pub(crate) fn merge_word(ids: &mut Vec<u32>, merges: &MergeMap) {
    let n = ids.len();
    if n < 2 {
        return;
    }
    let mut symbols: Vec<Symbol> = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| Symbol {
            id,
            prev: if i == 0 { NONE } else { i - 1 },
            next: if i + 1 == n { NONE } else { i + 1 },
            alive: true,
        })
        .collect();
    // Min-heap on (rank, position of the left symbol); the merged id identifies the pair so that
    // stale entries (a side already merged into something else) are recognised and dropped.
    let mut queue: BinaryHeap<Reverse<(u32, usize, u32)>> = BinaryHeap::with_capacity(n);
    for i in 0..n - 1 {
        if let Some(&(rank, new_id)) = merges.get(&(symbols[i].id, symbols[i + 1].id)) {
            queue.push(Reverse((rank, i, new_id)));
        }
    }
    while let Some(Reverse((_, pos, new_id))) = queue.pop() {
        let left = symbols[pos];
        if !left.alive || left.next == NONE {
            continue;
        }
        let right_pos = left.next;
        let right = symbols[right_pos];
        match merges.get(&(left.id, right.id)) {
            Some(&(_, id)) if id == new_id => {}
            _ => continue,
        }
        symbols[pos].id = new_id;
        symbols[pos].next = right.next;
        symbols[right_pos].alive = false;
        if right.next != NONE {
            symbols[right.next].prev = pos;
        }
        if left.prev != NONE {
            if let Some(&(rank, id)) = merges.get(&(symbols[left.prev].id, new_id)) {
                queue.push(Reverse((rank, left.prev, id)));
            }
        }
        if right.next != NONE {
            if let Some(&(rank, id)) = merges.get(&(new_id, symbols[right.next].id)) {
                queue.push(Reverse((rank, pos, id)));
            }
        }
    }
    ids.clear();
    let mut k = 0;
    while k != NONE {
        ids.push(symbols[k].id);
        k = symbols[k].next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straightforward O(n²) reference: merge the lowest-rank, leftmost pair until none is left.
    fn merge_naive(ids: &[u32], merges: &MergeMap) -> Vec<u32> {
        let mut v = ids.to_vec();
        loop {
            let best = (0..v.len().saturating_sub(1))
                .filter_map(|i| merges.get(&(v[i], v[i + 1])).map(|&(r, id)| (r, i, id)))
                .min();
            match best {
                Some((_, i, id)) => {
                    v[i] = id;
                    v.remove(i + 1);
                }
                None => return v,
            }
        }
    }

    #[test]
    fn matches_naive_merging() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        // Symbols 0..4 are "bytes"; random merges create ids 4.. from random pairs.
        let mut merges = MergeMap::new();
        let mut next_id = 4u32;
        for rank in 0..40u32 {
            let a = rng.random_range(0..next_id);
            let b = rng.random_range(0..next_id);
            merges.entry((a, b)).or_insert_with(|| {
                next_id += 1;
                (rank, next_id - 1)
            });
        }
        for _ in 0..2000 {
            let len = rng.random_range(0..30);
            let word: Vec<u32> = (0..len).map(|_| rng.random_range(0..4)).collect();
            let mut fast = word.clone();
            merge_word(&mut fast, &merges);
            assert_eq!(fast, merge_naive(&word, &merges), "word {word:?}");
        }
    }
}
