//! Forecasts: the Forecast use case, and the forecasters' restore from history at
//! start. The forecasters themselves live beside each car park's live state in the
//! engine and learn every change there (`domain/forecast.rs` has the model).

use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::Service;
use crate::{
    domain::{Arrival, CarParkId, Error, Forecaster, Prediction, Result, SpaceCategory, Timestamp},
    history::{BUCKET_MS, History},
    metrics,
};

/// Most times one Forecast call asks for.
pub const MAX_FORECAST_TIMES: usize = 100;
/// How much history a forecaster is restored from: the weekly profile's memory (a
/// week's value weighs 0.35, so three weeks back weigh under 10%).
const RESTORE_DAYS: i64 = 21;

/// One car park's forecast of one category.
#[derive(Debug, Clone, PartialEq)]
pub struct ForecastAnswer {
    /// Per requested time, in request order.
    pub points: Vec<(Timestamp, Prediction)>,
    /// When the numbers the forecast starts from were observed.
    pub observed_at: Option<Timestamp>,
    /// Local days the weekly profile has learned from.
    pub days_learned: u32,
}

impl Service {
    /// `category`'s available spaces at `car_park` forecast at each of `times`.
    pub fn forecast(
        &self,
        car_park: &CarParkId,
        category: SpaceCategory,
        times: &[Timestamp],
    ) -> Result<ForecastAnswer> {
        if times.is_empty() || times.len() > MAX_FORECAST_TIMES {
            return Err(Error::invalid(
                "times",
                format!("must list 1 to {MAX_FORECAST_TIMES} times"),
            ));
        }
        let now = self.now();
        let checked = times
            .iter()
            .enumerate()
            .map(|(i, t)| Arrival::time(*t, now, &format!("times[{i}]")))
            .collect::<Result<Vec<_>>>()?;
        self.engine
            .with_forecasts(car_park.as_str(), |cp, live, forecasts| {
                if cp.capacity.of(category) == 0 {
                    return Err(Error::FailedPrecondition(format!(
                        "car park {} has no {} spaces",
                        cp.id,
                        category.name()
                    )));
                }
                let forecaster = forecasts.of(category).filter(|f| !f.is_empty()).ok_or_else(|| {
                    Error::FailedPrecondition(format!(
                        "car park {} has reported no numbers yet: there is nothing to forecast from",
                        cp.id
                    ))
                })?;
                let points = times
                    .iter()
                    .zip(&checked)
                    .map(|(asked, at)| {
                        let p = forecasts
                            .forecast(cp, live, category, *at)
                            .expect("a forecaster with numbers");
                        (*asked, p)
                    })
                    .collect();
                Ok(ForecastAnswer {
                    points,
                    observed_at: forecaster.observed_at(),
                    days_learned: forecaster.days_learned(),
                })
            })
            .ok_or_else(|| Error::car_park_not_found(car_park))?
    }

    /// Restores every car park's forecasters from the last three weeks of occupancy
    /// samples in history, one car park at a time, while the server serves (until then
    /// a forecaster knows only what it saw since the start). Without a history,
    /// returns at once.
    pub async fn restore_forecasts(&self, stop: CancellationToken) {
        let Some(history) = self.history.clone() else {
            return;
        };
        let started = Instant::now();
        let to = self.now();
        let from = to - jiff::SignedDuration::from_hours(RESTORE_DAYS * 24);
        let (mut restored, mut samples) = (0usize, 0usize);
        for (id, zone, categories) in self.engine.categories() {
            for category in categories {
                if stop.is_cancelled() {
                    return;
                }
                let kept = match history.samples(id.as_str(), category, from, to).await {
                    Ok(kept) => kept,
                    Err(error) => {
                        // Forecasts still learn from live numbers; only the head start
                        // is lost.
                        tracing::warn!(%error, "forecasts not restored from history");
                        metrics::record_forecasts_restored("failed", 1);
                        return;
                    }
                };
                if kept.is_empty() {
                    continue;
                }
                let mut forecaster = Forecaster::new();
                for s in &kept {
                    // A bucket's numbers as they stood at its end.
                    let end = s.bucket + jiff::SignedDuration::from_millis(BUCKET_MS - 1);
                    forecaster.observe(end, &zone, s.last_free, s.capacity);
                }
                samples += kept.len();
                if self
                    .engine
                    .restore_forecaster(id.as_str(), category, forecaster)
                {
                    restored += 1;
                }
            }
        }
        metrics::record_forecasts_restored("restored", restored as u64);
        tracing::info!(
            forecasters = restored,
            samples,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "forecasts restored from history"
        );
    }
}
