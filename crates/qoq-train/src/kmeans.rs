//! Weighted k-means with seeded k-means++ initialisation and Lloyd iterations, and the
//! elbow rule DRPO uses to choose k (docs/drpo.md section 1, step 6).
//!
//! DRPO clusters a domain's history of reward vectors. Rewards are few distinct values, so
//! the history holds many repeated vectors: we cluster the distinct vectors weighted by
//! their multiplicity, which gives the same partition and inertia as clustering every copy
//! at a fraction of the cost.

use qoq_data::rng::{stream, unit};

/// Distinct points and how many times each occurred.
#[derive(Debug, Clone)]
pub struct WeightedPoints {
    pub points: Vec<Vec<f64>>,
    pub weights: Vec<f64>,
    /// For each input point, the index of its distinct point.
    pub index_of_input: Vec<usize>,
}

impl WeightedPoints {
    /// Deduplicates `points` (exact equality), keeping first-occurrence order.
    pub fn from_points(points: &[Vec<f64>]) -> Self {
        let mut order: Vec<usize> = (0..points.len()).collect();
        order.sort_by(|&a, &b| cmp_vec(&points[a], &points[b]).then(a.cmp(&b)));
        let mut first_of = vec![0usize; points.len()];
        for w in 0..order.len() {
            let i = order[w];
            first_of[i] = if w > 0 && points[order[w - 1]] == points[i] { first_of[order[w - 1]] } else { i };
        }
        let mut distinct_of_first = vec![usize::MAX; points.len()];
        let mut out = WeightedPoints {
            points: Vec::new(),
            weights: Vec::new(),
            index_of_input: Vec::with_capacity(points.len()),
        };
        for (i, p) in points.iter().enumerate() {
            let f = first_of[i];
            if distinct_of_first[f] == usize::MAX {
                distinct_of_first[f] = out.points.len();
                out.points.push(p.clone());
                out.weights.push(0.0);
            }
            let d = distinct_of_first[f];
            out.weights[d] += 1.0;
            out.index_of_input.push(d);
        }
        out
    }

    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.points.len()
    }
}

fn cmp_vec(a: &[f64], b: &[f64]) -> std::cmp::Ordering {
    for (x, y) in a.iter().zip(b) {
        match x.total_cmp(y) {
            std::cmp::Ordering::Equal => continue,
            other => return other,
        }
    }
    a.len().cmp(&b.len())
}

/// A clustering of weighted points.
#[derive(Debug, Clone)]
pub struct Clustering {
    pub centroids: Vec<Vec<f64>>,
    /// Cluster of each distinct point.
    pub assignment: Vec<usize>,
    /// Sum over points of weight x squared distance to its centroid.
    pub inertia: f64,
}

fn dist2(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Restarts per k: the best (lowest inertia) run is kept, so an unlucky initialisation
/// does not distort the elbow.
const RESTARTS: u64 = 3;
const MAX_ITERATIONS: usize = 300;

/// k-means of `data` into `k` clusters (`1 <= k <= data.len()`), deterministic in `seed`.
pub fn kmeans(data: &WeightedPoints, k: usize, seed: u64) -> Clustering {
    let k = k.clamp(1, data.len().max(1));
    (0..RESTARTS)
        .map(|r| lloyd(data, init_plus_plus(data, k, seed, r)))
        .min_by(|a, b| a.inertia.total_cmp(&b.inertia))
        .expect("RESTARTS > 0")
}

/// k-means++: the first centre drawn by weight, each next one by weight x D^2.
fn init_plus_plus(data: &WeightedPoints, k: usize, seed: u64, restart: u64) -> Vec<Vec<f64>> {
    let mut rng = stream(seed, &[0x6b6d_u64, k as u64, restart]);
    let draw = |scores: &[f64], rng: &mut rand_chacha::ChaCha8Rng| -> usize {
        let total: f64 = scores.iter().sum();
        if total <= 0.0 {
            return scores.iter().position(|&s| s > 0.0).unwrap_or(0);
        }
        let target = unit(rng) * total;
        let mut acc = 0.0;
        for (i, s) in scores.iter().enumerate() {
            acc += s;
            if acc > target {
                return i;
            }
        }
        scores.len() - 1
    };
    let mut centres = vec![data.points[draw(&data.weights, &mut rng)].clone()];
    let mut nearest: Vec<f64> = data.points.iter().map(|p| dist2(p, &centres[0])).collect();
    while centres.len() < k {
        let scores: Vec<f64> = nearest.iter().zip(&data.weights).map(|(d, w)| d * w).collect();
        // Every remaining point sits on a centre: take the first point not yet chosen.
        let next = if scores.iter().all(|&s| s <= 0.0) {
            (0..data.len()).find(|&i| !centres.iter().any(|c| c == &data.points[i])).unwrap_or(0)
        } else {
            draw(&scores, &mut rng)
        };
        let c = data.points[next].clone();
        for (n, p) in nearest.iter_mut().zip(&data.points) {
            *n = n.min(dist2(p, &c));
        }
        centres.push(c);
    }
    centres
}

fn lloyd(data: &WeightedPoints, mut centroids: Vec<Vec<f64>>) -> Clustering {
    let k = centroids.len();
    let dim = data.points.first().map_or(0, Vec::len);
    let mut assignment = vec![usize::MAX; data.len()];
    for _ in 0..MAX_ITERATIONS {
        let mut changed = false;
        for (i, p) in data.points.iter().enumerate() {
            let best = nearest_centroid(p, &centroids);
            if assignment[i] != best {
                assignment[i] = best;
                changed = true;
            }
        }
        if !changed {
            break;
        }
        let mut sums = vec![vec![0.0; dim]; k];
        let mut mass = vec![0.0; k];
        for (i, p) in data.points.iter().enumerate() {
            let c = assignment[i];
            mass[c] += data.weights[i];
            for (s, x) in sums[c].iter_mut().zip(p) {
                *s += data.weights[i] * x;
            }
        }
        for c in 0..k {
            if mass[c] > 0.0 {
                centroids[c] = sums[c].iter().map(|s| s / mass[c]).collect();
            } else {
                // An emptied cluster takes the point farthest from its centroid.
                let far = (0..data.len())
                    .max_by(|&a, &b| {
                        let da = dist2(&data.points[a], &centroids[assignment[a]]);
                        let db = dist2(&data.points[b], &centroids[assignment[b]]);
                        da.total_cmp(&db)
                    })
                    .unwrap_or(0);
                centroids[c] = data.points[far].clone();
            }
        }
    }
    let inertia =
        data.points.iter().zip(&assignment).zip(&data.weights).map(|((p, &c), w)| w * dist2(p, &centroids[c])).sum();
    Clustering { centroids, assignment, inertia }
}

fn nearest_centroid(p: &[f64], centroids: &[Vec<f64>]) -> usize {
    let mut best = 0;
    let mut best_d = f64::INFINITY;
    for (c, centre) in centroids.iter().enumerate() {
        let d = dist2(p, centre);
        if d < best_d {
            best = c;
            best_d = d;
        }
    }
    best
}

/// The elbow rule: K = min(k_max, distinct points); K <= 2 gives K; otherwise the smallest
/// k >= 2 with (I_k - I_{k+1}) < tol * (I_{k-1} - I_k), else K. Returns the clustering
/// for the chosen k.
pub fn elbow(data: &WeightedPoints, k_max: usize, tol: f64, seed: u64) -> Clustering {
    let cap = k_max.min(data.len()).max(1);
    if cap <= 2 {
        return kmeans(data, cap, seed);
    }
    let runs: Vec<Clustering> = (1..=cap).map(|k| kmeans(data, k, seed)).collect();
    let inertia = |k: usize| runs[k - 1].inertia;
    for k in 2..cap {
        if inertia(k) - inertia(k + 1) < tol * (inertia(k - 1) - inertia(k)) {
            return runs[k - 1].clone();
        }
    }
    runs[cap - 1].clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_collapse_into_weights() {
        let pts = vec![vec![1.0, 2.0], vec![0.0, 0.0], vec![1.0, 2.0], vec![0.0, 0.0], vec![3.0, 3.0]];
        let w = WeightedPoints::from_points(&pts);
        assert_eq!(w.points, vec![vec![1.0, 2.0], vec![0.0, 0.0], vec![3.0, 3.0]]);
        assert_eq!(w.weights, vec![2.0, 2.0, 1.0]);
        assert_eq!(w.index_of_input, vec![0, 1, 0, 1, 2]);
    }

    #[test]
    fn separated_groups_are_found_and_the_elbow_picks_their_number() {
        let mut pts = Vec::new();
        for (i, centre) in [0.1, 0.5, 0.9].iter().enumerate() {
            for j in 0..7 {
                let jitter = (j as f64 - 3.0) * 0.004 + i as f64 * 0.001;
                pts.push(vec![centre + jitter, centre - jitter, *centre]);
            }
        }
        let data = WeightedPoints::from_points(&pts);
        let c = elbow(&data, 10, 0.1, 7);
        assert_eq!(c.centroids.len(), 3);
        for g in 0..3 {
            let a = c.assignment[g * 7];
            assert!((0..7).all(|j| c.assignment[g * 7 + j] == a), "group {g} split");
        }
        // Same seed, same answer.
        let again = elbow(&data, 10, 0.1, 7);
        assert_eq!(again.assignment, c.assignment);
    }

    #[test]
    fn inertia_matches_the_weighted_definition_and_k_is_capped_by_distinct_points() {
        let pts = vec![vec![0.0], vec![0.0], vec![1.0], vec![3.0]];
        let data = WeightedPoints::from_points(&pts);
        let one = kmeans(&data, 1, 0);
        // Mean 1.0: 2 * 1 + 0 + 4 = 6.
        assert!((one.inertia - 6.0).abs() < 1e-12);
        assert_eq!(elbow(&data, 10, 0.1, 0).centroids.len(), 3, "K = distinct points when below k_max");
        let single = WeightedPoints::from_points(&[vec![0.5, 0.5], vec![0.5, 0.5]]);
        assert_eq!(elbow(&single, 10, 0.1, 0).centroids.len(), 1);
    }
}
