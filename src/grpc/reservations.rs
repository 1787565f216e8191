//! The Reservations service: convert, call the service, convert back (one shape per
//! handler, errors through `From<Error> for Status`).

use tonic::{Request, Response, Status};

use super::{
    convert::{self, pb_timestamp, required, timestamp},
    handlers::Api,
};
use crate::{
    audit::{self, Who},
    domain::{
        CalendarSlot, Error, Plate, Reservation, ReservationId, ReservationRequest,
        ReservationState, Result, SpaceCategory,
    },
    pb,
};

type Reply<T> = std::result::Result<Response<T>, Status>;

/// Longest cancel reason.
const MAX_REASON_CHARS: usize = 200;

fn reservation_id(value: &str) -> Result<ReservationId> {
    ReservationId::parse(value).map_err(|e| e.in_field("id"))
}

/// Unspecified means standard, as in queries.
fn category_or_standard(value: i32) -> Result<SpaceCategory> {
    match value {
        0 => Ok(SpaceCategory::Standard),
        v => convert::category(v, "category"),
    }
}

fn state(s: ReservationState) -> pb::ReservationState {
    match s {
        ReservationState::Reserved => pb::ReservationState::Reserved,
        ReservationState::CheckedIn => pb::ReservationState::CheckedIn,
        ReservationState::Completed => pb::ReservationState::Completed,
        ReservationState::Cancelled => pb::ReservationState::Cancelled,
        ReservationState::NoShow => pb::ReservationState::NoShow,
    }
}

fn state_filter(value: i32) -> Result<Option<ReservationState>> {
    let s = pb::ReservationState::try_from(value)
        .map_err(|_| Error::invalid("state", format!("{value} is not a reservation state")))?;
    Ok(match s {
        pb::ReservationState::Unspecified => None,
        pb::ReservationState::Reserved => Some(ReservationState::Reserved),
        pb::ReservationState::CheckedIn => Some(ReservationState::CheckedIn),
        pb::ReservationState::Completed => Some(ReservationState::Completed),
        pb::ReservationState::Cancelled => Some(ReservationState::Cancelled),
        pb::ReservationState::NoShow => Some(ReservationState::NoShow),
    })
}

pub fn pb_reservation(r: &Reservation) -> pb::Reservation {
    pb::Reservation {
        id: r.id.to_string(),
        car_park_id: r.car_park.to_string(),
        category: pb::SpaceCategory::from(r.category).into(),
        start_time: Some(pb_timestamp(r.start)),
        end_time: Some(pb_timestamp(r.end)),
        plate: r.plate.as_str().to_owned(),
        state: state(r.state).into(),
        price_minor: r.price_minor,
        currency: r.currency.to_string(),
        created_at: Some(pb_timestamp(r.created_at)),
        cancel_until: Some(pb_timestamp(r.cancel_until)),
        no_show_at: Some(pb_timestamp(r.no_show_at)),
        driver_id: r.driver.to_string(),
        changed_at: r.changed_at.map(pb_timestamp),
        cancel_reason: r.cancel_reason.to_string(),
    }
}

fn pb_slot(s: &CalendarSlot) -> pb::CalendarSlot {
    pb::CalendarSlot {
        start: Some(pb_timestamp(s.start)),
        end: Some(pb_timestamp(s.end)),
        remaining: s.remaining as i32,
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

fn reservation_request(r: &pb::CreateReservationRequest) -> Result<ReservationRequest> {
    let (start, end) = window(r.start_time.as_ref(), r.end_time.as_ref())?;
    let key = convert::idempotency_key(&r.idempotency_key)?;
    Ok(ReservationRequest {
        category: category_or_standard(r.category)?,
        start,
        end,
        plate: Plate::parse(&r.plate).map_err(|e| e.in_field("plate"))?,
        idempotency_key: key,
    })
}

#[tonic::async_trait]
impl pb::reservations_server::Reservations for Api {
    async fn create_reservation(
        &self,
        request: Request<pb::CreateReservationRequest>,
    ) -> Reply<pb::CreateReservationResponse> {
        let driver = self.driver(&request, "create a reservation")?;
        let r = request.get_ref();
        let car_park = convert::car_park_id(&r.car_park_id, "car_park_id")?;
        let wanted = reservation_request(r)?;
        let result = self
            .service
            .create_reservation(&driver, &car_park, wanted)
            .await;
        let on = result
            .as_ref()
            .map_or_else(|_| car_park.to_string(), |r| r.id.to_string());
        audit::write(Who::Driver(&driver), "create_reservation", &on, &result);
        let reservation = result?;
        Ok(Response::new(pb::CreateReservationResponse {
            reservation: Some(pb_reservation(&reservation)),
        }))
    }

    async fn get_reservation(
        &self,
        request: Request<pb::GetReservationRequest>,
    ) -> Reply<pb::GetReservationResponse> {
        let caller = self.any_caller(&request)?;
        let id = reservation_id(&request.get_ref().id)?;
        let reservation = self.service.get_reservation(&caller, &id).await?;
        Ok(Response::new(pb::GetReservationResponse {
            reservation: Some(pb_reservation(&reservation)),
        }))
    }

    async fn list_reservations(
        &self,
        request: Request<pb::ListReservationsRequest>,
    ) -> Reply<pb::ListReservationsResponse> {
        let caller = self.any_caller(&request)?;
        let r = request.get_ref();
        let size = convert::page_size(r.page_size, 100, 500)?;
        let token = convert::page_token_in(&r.page_token)?;
        let token = token.as_deref();
        let (page, next) = self
            .service
            .list_reservations(&caller, state_filter(r.state)?, size, token)
            .await?;
        Ok(Response::new(pb::ListReservationsResponse {
            reservations: page.iter().map(pb_reservation).collect(),
            next_page_token: convert::page_token_out(next),
        }))
    }

    async fn cancel_reservation(
        &self,
        request: Request<pb::CancelReservationRequest>,
    ) -> Reply<pb::CancelReservationResponse> {
        let driver = self.driver(&request, "cancel a reservation")?;
        let r = request.get_ref();
        let id = reservation_id(&r.id)?;
        crate::domain::check_text("reason", &r.reason, MAX_REASON_CHARS, false)?;
        let result = self
            .service
            .cancel_reservation(&driver, &id, r.reason.trim())
            .await;
        audit::write(
            Who::Driver(&driver),
            "cancel_reservation",
            id.as_str(),
            &result,
        );
        let reservation = result?;
        Ok(Response::new(pb::CancelReservationResponse {
            reservation: Some(pb_reservation(&reservation)),
        }))
    }

    async fn check_in(&self, request: Request<pb::CheckInRequest>) -> Reply<pb::CheckInResponse> {
        let caller = self.any_caller(&request)?;
        let id = reservation_id(&request.get_ref().id)?;
        let result = self.service.check_in(&caller, &id).await;
        audit::write(Who::from(&caller), "check_in", id.as_str(), &result);
        let reservation = result?;
        Ok(Response::new(pb::CheckInResponse {
            reservation: Some(pb_reservation(&reservation)),
        }))
    }

    async fn check_out(
        &self,
        request: Request<pb::CheckOutRequest>,
    ) -> Reply<pb::CheckOutResponse> {
        let caller = self.any_caller(&request)?;
        let id = reservation_id(&request.get_ref().id)?;
        let result = self.service.check_out(&caller, &id).await;
        audit::write(Who::from(&caller), "check_out", id.as_str(), &result);
        let reservation = result?;
        Ok(Response::new(pb::CheckOutResponse {
            reservation: Some(pb_reservation(&reservation)),
        }))
    }

    async fn get_reservation_calendar(
        &self,
        request: Request<pb::GetReservationCalendarRequest>,
    ) -> Reply<pb::GetReservationCalendarResponse> {
        let r = request.get_ref();
        let car_park = convert::car_park_id(&r.car_park_id, "car_park_id")?;
        let (start, end) = window(r.start_time.as_ref(), r.end_time.as_ref())?;
        let slots = self.service.reservation_calendar(
            &car_park,
            category_or_standard(r.category)?,
            start,
            end,
        )?;
        Ok(Response::new(pb::GetReservationCalendarResponse {
            slots: slots.iter().map(pb_slot).collect(),
        }))
    }
}
