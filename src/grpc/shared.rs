//! The SharedParking service: convert, call the service, convert back (one shape per
//! handler, errors through `From<Error> for Status`).

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use tonic::{Request, Response, Status};

use super::{
    convert::{self, lat_lng, pb_lat_lng, pb_timestamp, required, timestamp},
    handlers::Api,
};
use crate::{
    audit::{self, Who},
    domain::{
        Blackout, BookingId, BookingRequest, BookingState, CancelledBy, DriverId, Error,
        NearbyQuery, OfferChange, OfferId, OfferState, Plate, Radius, RegionId, Result,
        SharedBooking, SharedOffer, SpaceCategory, TimeZoneName, WeeklyPeriod, key_suffix,
    },
    pb,
    service::OfferFound,
};

type Reply<T> = std::result::Result<Response<T>, Status>;

const MAX_REASON_CHARS: usize = 200;

fn offer_id(value: &str, field: &str) -> Result<OfferId> {
    OfferId::parse(value).map_err(|e| e.in_field(field))
}

fn booking_id(value: &str) -> Result<BookingId> {
    BookingId::parse(value).map_err(|e| e.in_field("id"))
}

/// A new offer's id when its host leaves it empty: `o` and 16 base-36 digits of a
/// hash of the host, the time and a counter.
fn new_offer_id(host: &DriverId) -> OfferId {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let suffix = key_suffix(host, &format!("{nanos}:{n}"));
    OfferId::parse(&format!("o{}", &suffix[..16])).expect("a valid id")
}

fn reason(value: &str) -> Result<&str> {
    crate::domain::check_text("reason", value, MAX_REASON_CHARS, false)?;
    Ok(value.trim())
}

fn category_or_standard(value: i32) -> Result<SpaceCategory> {
    match value {
        0 => Ok(SpaceCategory::Standard),
        v => convert::category(v, "category"),
    }
}

/// An offer as its host sends it; the server sets id (when empty), host and state.
fn offer(p: pb::SharedOffer, host: &DriverId) -> Result<SharedOffer> {
    let f = |name: &str| format!("offer.{name}");
    let id = if p.id.is_empty() {
        new_offer_id(host)
    } else {
        offer_id(&p.id, &f("id"))?
    };
    let schedule = p
        .schedule
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let bad = || Error::invalid(f(&format!("schedule[{i}]")), "minutes must be 0 to 1440");
            Ok(WeeklyPeriod {
                weekday: u8::try_from(w.weekday).map_err(|_| bad())?,
                start_minute: u16::try_from(w.start_minute).map_err(|_| bad())?,
                end_minute: u16::try_from(w.end_minute).map_err(|_| bad())?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let blackouts = p
        .blackouts
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let date = |s: &str| {
                s.parse().map_err(|_| {
                    Error::invalid(
                        f(&format!("blackouts[{i}]")),
                        "dates are YYYY-MM-DD (from_date, to_date)",
                    )
                })
            };
            Ok(Blackout {
                from: date(&b.from_date)?,
                to: date(&b.to_date)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(SharedOffer {
        id,
        host: host.clone(),
        region: RegionId::parse_place(&p.region).map_err(|e| e.in_field(&f("region")))?,
        location: lat_lng(p.location.as_ref(), &f("location"))?,
        address: p.address,
        description: p.description,
        category: category_or_standard(p.category).map_err(|e| e.in_field("offer"))?,
        spaces: u32::try_from(p.spaces).unwrap_or(0),
        time_zone: TimeZoneName::parse(&p.time_zone).map_err(|e| e.in_field(&f("time_zone")))?,
        schedule,
        blackouts,
        hourly_rate_minor: p.hourly_rate_minor,
        cap_per_booking_minor: p.cap_per_booking_minor,
        currency: Arc::from(if p.currency.is_empty() {
            "CNY"
        } else {
            p.currency.as_str()
        }),
        max_booking_minutes: match p.max_booking_minutes {
            0 => 1440,
            n => u32::try_from(n).unwrap_or(0),
        },
        state: OfferState::Active,
    })
}

fn pb_offer(o: &SharedOffer) -> pb::SharedOffer {
    pb::SharedOffer {
        id: o.id.to_string(),
        host_id: o.host.to_string(),
        region: o.region.to_string(),
        location: Some(pb_lat_lng(o.location)),
        address: o.address.clone(),
        description: o.description.clone(),
        category: pb::SpaceCategory::from(o.category).into(),
        spaces: o.spaces as i32,
        time_zone: o.time_zone.as_str().to_owned(),
        schedule: o
            .schedule
            .iter()
            .map(|w| pb::WeeklyPeriod {
                weekday: w.weekday.into(),
                start_minute: w.start_minute.into(),
                end_minute: w.end_minute.into(),
            })
            .collect(),
        blackouts: o
            .blackouts
            .iter()
            .map(|b| pb::Blackout {
                from_date: b.from.to_string(),
                to_date: b.to.to_string(),
            })
            .collect(),
        hourly_rate_minor: o.hourly_rate_minor,
        cap_per_booking_minor: o.cap_per_booking_minor,
        currency: o.currency.to_string(),
        max_booking_minutes: o.max_booking_minutes as i32,
        state: match o.state {
            OfferState::Active => pb::OfferState::Active,
            OfferState::Withdrawn => pb::OfferState::Withdrawn,
        }
        .into(),
    }
}

fn booking_state(s: BookingState) -> pb::BookingState {
    match s {
        BookingState::Booked => pb::BookingState::Booked,
        BookingState::CheckedIn => pb::BookingState::CheckedIn,
        BookingState::Completed => pb::BookingState::Completed,
        BookingState::Cancelled => pb::BookingState::Cancelled,
        BookingState::NoShow => pb::BookingState::NoShow,
    }
}

/// A booking as `who` sees it (the plate masked for the host).
fn pb_booking(b: &SharedBooking, who: &DriverId) -> pb::SharedBooking {
    pb::SharedBooking {
        id: b.id.to_string(),
        offer_id: b.offer.to_string(),
        driver_id: b.driver.to_string(),
        start_time: Some(pb_timestamp(b.start)),
        end_time: Some(pb_timestamp(b.end)),
        plate: b.plate_for(who),
        state: booking_state(b.state).into(),
        price_minor: b.price_minor,
        currency: b.currency.to_string(),
        cancelled_by: match b.cancelled_by {
            None => pb::CancelledBy::Unspecified,
            Some(CancelledBy::Driver) => pb::CancelledBy::Driver,
            Some(CancelledBy::Host) => pb::CancelledBy::Host,
        }
        .into(),
        reason: b.reason.to_string(),
        created_at: Some(pb_timestamp(b.created_at)),
        no_show_at: Some(pb_timestamp(b.no_show_at)),
    }
}

fn window(
    start: Option<&prost_types::Timestamp>,
    end: Option<&prost_types::Timestamp>,
) -> Result<(crate::domain::Timestamp, crate::domain::Timestamp)> {
    let start = timestamp(required(start, "start_time")?, "start_time")?;
    let end = timestamp(required(end, "end_time")?, "end_time")?;
    Ok((start, end))
}

fn state_filter(value: i32) -> Result<Option<BookingState>> {
    let s = pb::BookingState::try_from(value)
        .map_err(|_| Error::invalid("state", format!("{value} is not a booking state")))?;
    Ok(match s {
        pb::BookingState::Unspecified => None,
        pb::BookingState::Booked => Some(BookingState::Booked),
        pb::BookingState::CheckedIn => Some(BookingState::CheckedIn),
        pb::BookingState::Completed => Some(BookingState::Completed),
        pb::BookingState::Cancelled => Some(BookingState::Cancelled),
        pb::BookingState::NoShow => Some(BookingState::NoShow),
    })
}

fn pb_result(f: &OfferFound) -> pb::OfferResult {
    pb::OfferResult {
        offer: Some(pb_offer(&f.offer)),
        distance_m: f.distance_m,
        price_minor: f.price_minor,
        currency: f.offer.currency.to_string(),
    }
}

#[tonic::async_trait]
impl pb::shared_parking_server::SharedParking for Api {
    async fn offer_space(
        &self,
        request: Request<pb::OfferSpaceRequest>,
    ) -> Reply<pb::OfferSpaceResponse> {
        let host = self.driver(&request, "offer a space")?;
        let o = offer(required(request.into_inner().offer, "offer")?, &host)?;
        let id = o.id.to_string();
        let result = self.service.offer_space(&host, o).await;
        audit::write(Who::Driver(&host), "offer_space", &id, &result);
        let stored = result?;
        Ok(Response::new(pb::OfferSpaceResponse {
            offer: Some(pb_offer(&stored)),
        }))
    }

    async fn update_offer(
        &self,
        request: Request<pb::UpdateOfferRequest>,
    ) -> Reply<pb::UpdateOfferResponse> {
        let host = self.driver(&request, "update an offer")?;
        let r = request.into_inner();
        let p = required(r.offer, "offer")?;
        let id = offer_id(&p.id, "offer.id")?;
        let new = offer(p, &host)?;
        let why = reason(&r.reason)?;
        let result = self
            .service
            .change_offer(
                &host,
                &id,
                OfferChange::Terms(Box::new(new)),
                r.cancel_bookings,
                why,
            )
            .await;
        audit::write(Who::Driver(&host), "update_offer", id.as_str(), &result);
        let (stored, cancelled) = result?;
        Ok(Response::new(pb::UpdateOfferResponse {
            offer: Some(pb_offer(&stored)),
            cancelled_booking_ids: cancelled.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn withdraw_offer(
        &self,
        request: Request<pb::WithdrawOfferRequest>,
    ) -> Reply<pb::WithdrawOfferResponse> {
        let host = self.driver(&request, "withdraw an offer")?;
        let r = request.get_ref();
        let id = offer_id(&r.id, "id")?;
        let why = reason(&r.reason)?;
        let result = self
            .service
            .change_offer(&host, &id, OfferChange::Withdraw, r.cancel_bookings, why)
            .await;
        audit::write(Who::Driver(&host), "withdraw_offer", id.as_str(), &result);
        let (stored, cancelled) = result?;
        Ok(Response::new(pb::WithdrawOfferResponse {
            offer: Some(pb_offer(&stored)),
            cancelled_booking_ids: cancelled.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn list_my_offers(
        &self,
        request: Request<pb::ListMyOffersRequest>,
    ) -> Reply<pb::ListMyOffersResponse> {
        let host = self.driver(&request, "list offers")?;
        let r = request.get_ref();
        let token = convert::page_token_in(&r.page_token)?;
        let token = token.as_deref();
        let (offers, next) =
            self.service
                .list_my_offers(&host, convert::page_size(r.page_size, 100, 500)?, token);
        Ok(Response::new(pb::ListMyOffersResponse {
            offers: offers.iter().map(|o| pb_offer(o)).collect(),
            next_page_token: convert::page_token_out(next),
        }))
    }

    async fn search_offers(
        &self,
        request: Request<pb::SearchOffersRequest>,
    ) -> Reply<pb::SearchOffersResponse> {
        self.driver(&request, "search shared offers")?;
        let r = request.get_ref();
        let center = lat_lng(r.location.as_ref(), "location")?;
        let radius_m = if r.radius_m == 0.0 {
            2_000.0
        } else {
            r.radius_m
        };
        let radius =
            Radius::new(radius_m, NearbyQuery::MAX_RADIUS_M).map_err(|e| e.in_field("radius_m"))?;
        let limit = match r.limit {
            0 => 10,
            n if (1..=100).contains(&n) => n as usize,
            _ => return Err(Error::invalid("limit", "must be 1 to 100").into()),
        };
        let (start, end) = window(r.start_time.as_ref(), r.end_time.as_ref())?;
        let found = self.service.search_offers(
            center,
            radius,
            start,
            end,
            category_or_standard(r.category)?,
            1,
            limit,
        )?;
        Ok(Response::new(pb::SearchOffersResponse {
            results: found.iter().map(pb_result).collect(),
        }))
    }

    async fn book_offer(
        &self,
        request: Request<pb::BookOfferRequest>,
    ) -> Reply<pb::BookOfferResponse> {
        let driver = self.driver(&request, "book a shared space")?;
        let r = request.get_ref();
        let offer = offer_id(&r.offer_id, "offer_id")?;
        let (start, end) = window(r.start_time.as_ref(), r.end_time.as_ref())?;
        let key = convert::idempotency_key(&r.idempotency_key)?;
        let wanted = BookingRequest {
            start,
            end,
            plate: Plate::parse(&r.plate).map_err(|e| e.in_field("plate"))?,
            idempotency_key: key,
        };
        let result = self.service.book_offer(&driver, &offer, wanted).await;
        let on = result
            .as_ref()
            .map_or_else(|_| offer.to_string(), |b| b.id.to_string());
        audit::write(Who::Driver(&driver), "book_offer", &on, &result);
        let booking = result?;
        Ok(Response::new(pb::BookOfferResponse {
            booking: Some(pb_booking(&booking, &driver)),
        }))
    }

    async fn get_booking(
        &self,
        request: Request<pb::GetBookingRequest>,
    ) -> Reply<pb::GetBookingResponse> {
        let who = self.driver(&request, "read a booking")?;
        let id = booking_id(&request.get_ref().id)?;
        let booking = self.service.get_booking(&who, &id).await?;
        Ok(Response::new(pb::GetBookingResponse {
            booking: Some(pb_booking(&booking, &who)),
        }))
    }

    async fn cancel_booking(
        &self,
        request: Request<pb::CancelBookingRequest>,
    ) -> Reply<pb::CancelBookingResponse> {
        let who = self.driver(&request, "cancel a booking")?;
        let r = request.get_ref();
        let id = booking_id(&r.id)?;
        let result = self
            .service
            .cancel_booking(&who, &id, reason(&r.reason)?)
            .await;
        audit::write(Who::Driver(&who), "cancel_booking", id.as_str(), &result);
        let booking = result?;
        Ok(Response::new(pb::CancelBookingResponse {
            booking: Some(pb_booking(&booking, &who)),
        }))
    }

    async fn list_my_bookings(
        &self,
        request: Request<pb::ListMyBookingsRequest>,
    ) -> Reply<pb::ListMyBookingsResponse> {
        let who = self.driver(&request, "list bookings")?;
        let r = request.get_ref();
        let token = convert::page_token_in(&r.page_token)?;
        let token = token.as_deref();
        let (bookings, next) = self
            .service
            .list_my_bookings(
                &who,
                state_filter(r.state)?,
                convert::page_size(r.page_size, 100, 500)?,
                token,
            )
            .await?;
        Ok(Response::new(pb::ListMyBookingsResponse {
            bookings: bookings.iter().map(|b| pb_booking(b, &who)).collect(),
            next_page_token: convert::page_token_out(next),
        }))
    }

    async fn check_in(
        &self,
        request: Request<pb::CheckInBookingRequest>,
    ) -> Reply<pb::CheckInBookingResponse> {
        let who = self.driver(&request, "check in a booking")?;
        let id = booking_id(&request.get_ref().id)?;
        let result = self.service.check_in_booking(&who, &id).await;
        audit::write(Who::Driver(&who), "check_in_booking", id.as_str(), &result);
        let booking = result?;
        Ok(Response::new(pb::CheckInBookingResponse {
            booking: Some(pb_booking(&booking, &who)),
        }))
    }

    async fn check_out(
        &self,
        request: Request<pb::CheckOutBookingRequest>,
    ) -> Reply<pb::CheckOutBookingResponse> {
        let who = self.driver(&request, "check out a booking")?;
        let id = booking_id(&request.get_ref().id)?;
        let result = self.service.check_out_booking(&who, &id).await;
        audit::write(Who::Driver(&who), "check_out_booking", id.as_str(), &result);
        let booking = result?;
        Ok(Response::new(pb::CheckOutBookingResponse {
            booking: Some(pb_booking(&booking, &who)),
        }))
    }
}
