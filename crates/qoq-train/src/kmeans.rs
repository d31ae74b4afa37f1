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

/// k-means++ starts per k by default (`algorithm.kmeans_restarts`; sklearn's classic
/// `n_init`): the best (lowest inertia) run is kept, so an unlucky initialisation does not
/// distort the elbow.
pub const DEFAULT_RESTARTS: usize = 10;
const MAX_ITERATIONS: usize = 300;

/// k-means of `data` into `k` clusters (`1 <= k <= data.len()`), deterministic in `seed`:
/// the lowest-inertia of `restarts` k-means++ starts (the first of equals). Restart r uses
/// the same start whatever `restarts` is, so more restarts never give a worse clustering.
/// With k = 1 or k = every distinct point the start cannot matter: one run is made.
pub fn kmeans(data: &WeightedPoints, k: usize, seed: u64, restarts: usize) -> Clustering {
    let k = k.clamp(1, data.len().max(1));
    let restarts = if k == 1 || k == data.len() { 1 } else { restarts.max(1) };
    (0..restarts as u64)
        .map(|r| lloyd(data, init_plus_plus(data, k, seed, r)))
        .min_by(|a, b| a.inertia.total_cmp(&b.inertia))
        .expect("at least one restart")
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

/// The elbow rule's cap: K = min(k_max, distinct points), at least 1.
pub fn elbow_cap(data: &WeightedPoints, k_max: usize) -> usize {
    k_max.min(data.len()).max(1)
}

/// Whether k passes the elbow test at tolerance `tol` on the inertias `inertia[k - 1]` =
/// I_k (k >= 2, k + 1 <= inertia.len()): (I_k - I_{k+1}) < tol * (I_{k-1} - I_k).
pub fn elbow_passes(inertia: &[f64], k: usize, tol: f64) -> bool {
    let i = |k: usize| inertia[k - 1];
    i(k) - i(k + 1) < tol * (i(k - 1) - i(k))
}

/// The elbow's k from the inertias I_1..I_K (`inertia[k - 1]`, K = `inertia.len()`): K <= 2
/// gives K; otherwise the smallest k >= 2 that [`elbow_passes`], else K.
pub fn elbow_k(inertia: &[f64], tol: f64) -> usize {
    let cap = inertia.len().max(1);
    if cap <= 2 {
        return cap;
    }
    (2..cap).find(|&k| elbow_passes(inertia, k, tol)).unwrap_or(cap)
}

/// The clusterings for k = 1..=K (K = [`elbow_cap`]), index k - 1.
pub fn clusterings(data: &WeightedPoints, k_max: usize, seed: u64, restarts: usize) -> Vec<Clustering> {
    (1..=elbow_cap(data, k_max)).map(|k| kmeans(data, k, seed, restarts)).collect()
}

/// The elbow rule: K = min(k_max, distinct points); K <= 2 gives K; otherwise the smallest
/// k >= 2 with (I_k - I_{k+1}) < tol * (I_{k-1} - I_k), else K. Returns the clustering
/// for the chosen k.
pub fn elbow(data: &WeightedPoints, k_max: usize, tol: f64, seed: u64, restarts: usize) -> Clustering {
    let cap = elbow_cap(data, k_max);
    if cap <= 2 {
        return kmeans(data, cap, seed, restarts);
    }
    // k + 1 is clustered only when k fails the test: the same k as [`elbow_k`] on the
    // whole curve, without the clusterings past it.
    let mut runs = vec![kmeans(data, 1, seed, restarts), kmeans(data, 2, seed, restarts)];
    for k in 2..cap {
        runs.push(kmeans(data, k + 1, seed, restarts));
        let inertia: Vec<f64> = runs.iter().map(|c| c.inertia).collect();
        if elbow_passes(&inertia, k, tol) {
            return runs.swap_remove(k - 1);
        }
    }
    runs.swap_remove(cap - 1)
}

/// The hysteresis rule (`algorithm.k_selection = "hysteresis"`): the elbow test of
/// [`elbow_k`] with a band around its tolerance, so a k that only just passes or fails it
/// does not flip from one clustering to the next. `previous` is the domain's k at its last
/// clustering (0: none), `inertia[k - 1]` = I_k for k = 1..=K.
///
/// - No usable previous k (none, or below 2), or K <= 2: the elbow's k.
/// - A smaller k >= 2 that passes the test clearly, at tol / 2: the smallest such k.
/// - Else the previous k (capped at K) if it is K or still passes the test at 2 tol.
/// - Else the elbow's k.
pub fn hysteresis_k(inertia: &[f64], tol: f64, previous: usize) -> usize {
    let cap = inertia.len().max(1);
    let elbow = elbow_k(inertia, tol);
    if cap <= 2 || previous < 2 {
        return elbow;
    }
    let kept = previous.min(cap);
    if let Some(k) = (2..kept).find(|&k| elbow_passes(inertia, k, tol / 2.0)) {
        return k;
    }
    if kept == cap || elbow_passes(inertia, kept, 2.0 * tol) {
        return kept;
    }
    elbow
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
        let c = elbow(&data, 10, 0.1, 7, DEFAULT_RESTARTS);
        assert_eq!(c.centroids.len(), 3);
        for g in 0..3 {
            let a = c.assignment[g * 7];
            assert!((0..7).all(|j| c.assignment[g * 7 + j] == a), "group {g} split");
        }
        // Same seed, same answer.
        let again = elbow(&data, 10, 0.1, 7, DEFAULT_RESTARTS);
        assert_eq!(again.assignment, c.assignment);
    }

    #[test]
    fn inertia_matches_the_weighted_definition_and_k_is_capped_by_distinct_points() {
        let pts = vec![vec![0.0], vec![0.0], vec![1.0], vec![3.0]];
        let data = WeightedPoints::from_points(&pts);
        let one = kmeans(&data, 1, 0, DEFAULT_RESTARTS);
        // Mean 1.0: 2 * 1 + 0 + 4 = 6.
        assert!((one.inertia - 6.0).abs() < 1e-12);
        assert_eq!(
            elbow(&data, 10, 0.1, 0, DEFAULT_RESTARTS).centroids.len(),
            3,
            "K = distinct points when below k_max"
        );
        let single = WeightedPoints::from_points(&[vec![0.5, 0.5], vec![0.5, 0.5]]);
        assert_eq!(elbow(&single, 10, 0.1, 0, DEFAULT_RESTARTS).centroids.len(), 1);
    }

    #[test]
    fn more_restarts_never_give_a_worse_clustering_and_one_run_suffices_at_the_extremes() {
        let mut r = qoq_data::rng::stream(3, &[1]);
        let pts: Vec<Vec<f64>> =
            (0..60).map(|_| (0..4).map(|_| (unit(&mut r) * 5.0).floor() / 4.0).collect()).collect();
        let data = WeightedPoints::from_points(&pts);
        for k in 1..=8 {
            let (three, ten) = (kmeans(&data, k, 11, 3), kmeans(&data, k, 11, 10));
            assert!(ten.inertia <= three.inertia, "k = {k}: {} > {}", ten.inertia, three.inertia);
        }
        // k = 1 and k = every distinct point: the same clustering whatever the restarts.
        for k in [1, data.len()] {
            let (one, many) = (kmeans(&data, k, 5, 1), kmeans(&data, k, 5, 10));
            assert_eq!((one.assignment, one.inertia), (many.assignment, many.inertia));
        }
    }

    #[test]
    fn the_elbow_stops_early_but_picks_what_the_whole_curve_gives() {
        let mut r = qoq_data::rng::stream(4, &[2]);
        for n in [3, 8, 40, 200] {
            let pts: Vec<Vec<f64>> =
                (0..n).map(|_| (0..5).map(|_| (unit(&mut r) * 7.0).floor() / 6.0).collect()).collect();
            let data = WeightedPoints::from_points(&pts);
            for tol in [0.05, 0.1, 0.3] {
                let curve: Vec<f64> = clusterings(&data, 10, 1, 3).iter().map(|c| c.inertia).collect();
                let c = elbow(&data, 10, tol, 1, 3);
                assert_eq!(c.centroids.len(), elbow_k(&curve, tol), "n = {n}, tol = {tol}");
                assert_eq!(c.inertia, curve[c.centroids.len() - 1]);
            }
        }
    }

    #[test]
    fn elbow_k_and_hysteresis_follow_their_rules() {
        // Drops 100, 10, 9.5, 0.9, 0.3: the ratio at k = 2 is 0.1 (fails tol 0.1 by a hair),
        // at k = 3 0.95, at k = 4 0.095, at k = 5 0.33.
        let curve = [200.0, 100.0, 90.0, 80.5, 79.6, 79.3];
        assert_eq!(elbow_k(&curve, 0.1), 4);
        assert_eq!(elbow_k(&curve, 0.11), 2);
        assert_eq!(elbow_k(&[5.0, 1.0], 0.1), 2, "K <= 2 gives K");
        assert_eq!(elbow_k(&[5.0, 1.0, 0.5, 0.2], 0.01), 4, "no k passes: K");
        // Hysteresis: no previous k -> the elbow.
        assert_eq!(hysteresis_k(&curve, 0.1, 0), 4);
        // Previous 2 passes at 2 tol: kept although the elbow says 4.
        assert_eq!(hysteresis_k(&curve, 0.1, 2), 2);
        // Previous 4, the elbow at tol 0.11 says 2, but 2 does not pass at tol / 2: keep 4,
        // which still passes at 2 tol.
        assert_eq!(hysteresis_k(&curve, 0.11, 4), 4);
        // A clear smaller elbow wins: k = 2 passes at tol / 2 with tol = 0.3.
        assert_eq!(hysteresis_k(&curve, 0.3, 4), 2);
        // Previous 3 fails even at 2 tol (ratio 0.95): the elbow's k.
        assert_eq!(hysteresis_k(&curve, 0.1, 3), 4);
        // Previous beyond the cap is capped, and the cap is kept.
        assert_eq!(hysteresis_k(&curve, 0.1, 9), 6);
    }
}
