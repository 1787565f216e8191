//! The Sessions service: convert, call the service, convert back (one shape per
//! handler, errors through `From<Error> for Status`).

use tonic::{Request, Response, Status};

use super::{
    convert::{self, pb_plate_color, pb_timestamp, plate_color, timestamp},
    handlers::Api,
};
use crate::{
    domain::{
        Error, LedgerEntry, ParkingSession, PaymentMethod, PaymentStatus, Plate, PlateLink, Result,
        SessionId, SessionState,
    },
    pb,
    service::{Caller, Service, SessionFilter},
};

type Reply<T> = std::result::Result<Response<T>, Status>;

fn state(s: SessionState) -> pb::SessionState {
    match s {
        SessionState::Open => pb::SessionState::Open,
        SessionState::ClosedPaid => pb::SessionState::ClosedPaid,
        SessionState::ClosedUnpaid => pb::SessionState::ClosedUnpaid,
        SessionState::ClosedFree => pb::SessionState::ClosedFree,
        SessionState::Voided => pb::SessionState::Voided,
    }
}

fn state_filter(value: i32) -> Result<Option<SessionState>> {
    let s = pb::SessionState::try_from(value)
        .map_err(|_| Error::invalid("state", format!("{value} is not a session state")))?;
    Ok(match s {
        pb::SessionState::Unspecified => None,
        pb::SessionState::Open => Some(SessionState::Open),
        pb::SessionState::ClosedPaid => Some(SessionState::ClosedPaid),
        pb::SessionState::ClosedUnpaid => Some(SessionState::ClosedUnpaid),
        pb::SessionState::ClosedFree => Some(SessionState::ClosedFree),
        pb::SessionState::Voided => Some(SessionState::Voided),
    })
}

fn method(m: PaymentMethod) -> pb::PaymentMethod {
    match m {
        PaymentMethod::None => pb::PaymentMethod::Unspecified,
        PaymentMethod::Wallet => pb::PaymentMethod::Wallet,
        PaymentMethod::Gateway => pb::PaymentMethod::Gateway,
        PaymentMethod::Barrier => pb::PaymentMethod::Barrier,
    }
}

/// The method a plate is linked with: WALLET unless GATEWAY is asked for.
fn link_method(value: i32) -> Result<PaymentMethod> {
    match pb::PaymentMethod::try_from(value) {
        Ok(pb::PaymentMethod::Unspecified | pb::PaymentMethod::Wallet) => Ok(PaymentMethod::Wallet),
        Ok(pb::PaymentMethod::Gateway) => Ok(PaymentMethod::Gateway),
        Ok(pb::PaymentMethod::Barrier) => Err(Error::invalid(
            "payment_method",
            "a linked plate pays by WALLET or GATEWAY",
        )),
        Err(_) => Err(Error::invalid(
            "payment_method",
            format!("{value} is not a payment method"),
        )),
    }
}

fn status(s: PaymentStatus) -> pb::PaymentStatus {
    match s {
        PaymentStatus::NotNeeded => pb::PaymentStatus::NotNeeded,
        PaymentStatus::Pending => pb::PaymentStatus::Pending,
        PaymentStatus::Succeeded => pb::PaymentStatus::Succeeded,
        PaymentStatus::Failed => pb::PaymentStatus::Failed,
    }
}

fn pb_session(s: &ParkingSession, caller: &Caller) -> pb::ParkingSession {
    pb::ParkingSession {
        id: s.id.to_string(),
        car_park_id: s.id.car_park().to_string(),
        plate: Service::plate_for(s, caller),
        plate_color: pb_plate_color(s.plate_color).into(),
        lane: s.lane.clone(),
        entry_time: s.entry_time.map(pb_timestamp),
        exit_time: s.exit_time.map(pb_timestamp),
        state: state(s.state).into(),
        fee_minor: s.fee_minor,
        currency: s.tariff.currency.clone(),
        tariff_version: s.tariff_version,
        reservation_id: s
            .prepaid
            .as_ref()
            .map_or_else(String::new, |p| p.id.clone()),
        payment: Some(pb::Payment {
            method: method(s.payment.method).into(),
            status: status(s.payment.status).into(),
            attempts: s.payment.attempts,
            receipt_id: s.payment.receipt_id.clone(),
            failure: s.payment.failure.clone(),
        }),
        driver_id: s
            .driver
            .as_ref()
            .map_or_else(String::new, |d| d.to_string()),
        clock_skew: s.flags.clock_skew,
        arrears_at_entry: s.flags.arrears_at_entry,
        void_reason: s.void_reason.clone(),
    }
}

fn pb_link(l: &PlateLink) -> pb::LinkedPlate {
    pb::LinkedPlate {
        plate: l.plate.as_str().to_owned(),
        plate_color: pb_plate_color(l.color).into(),
        payment_method: method(l.method).into(),
        linked_at: Some(pb_timestamp(l.linked_at)),
    }
}

fn pb_entry(e: &LedgerEntry) -> pb::LedgerEntry {
    pb::LedgerEntry {
        id: e.id.clone(),
        kind: match e.kind {
            crate::domain::EntryKind::TopUp => "top_up",
            crate::domain::EntryKind::Charge => "charge",
            crate::domain::EntryKind::Refund => "refund",
        }
        .to_owned(),
        amount_minor: e.amount_minor,
        currency: e.currency.clone(),
        from_account: e.from.to_string(),
        to_account: e.to.to_string(),
        at: Some(pb_timestamp(e.at)),
        balance_after: e.balance_after,
    }
}

fn plate(value: &str) -> Result<Plate> {
    Plate::parse(value).map_err(|e| e.in_field("plate"))
}

#[tonic::async_trait]
impl pb::sessions_server::Sessions for Api {
    async fn link_plate(
        &self,
        request: Request<pb::LinkPlateRequest>,
    ) -> Reply<pb::LinkPlateResponse> {
        let driver = self.driver(&request, "link a plate")?;
        let r = request.get_ref();
        let plate = plate(&r.plate)?;
        let color = plate_color(r.plate_color, "plate_color")?;
        let method = link_method(r.payment_method)?;
        let link = self
            .service
            .link_plate(&driver, plate, color, method)
            .await?;
        Ok(Response::new(pb::LinkPlateResponse {
            plate: Some(pb_link(&link)),
        }))
    }

    async fn unlink_plate(
        &self,
        request: Request<pb::UnlinkPlateRequest>,
    ) -> Reply<pb::UnlinkPlateResponse> {
        let driver = self.driver(&request, "unlink a plate")?;
        let plate = plate(&request.get_ref().plate)?;
        self.service.unlink_plate(&driver, &plate).await?;
        Ok(Response::new(pb::UnlinkPlateResponse {}))
    }

    async fn list_my_plates(
        &self,
        request: Request<pb::ListMyPlatesRequest>,
    ) -> Reply<pb::ListMyPlatesResponse> {
        let driver = self.driver(&request, "list their plates")?;
        let plates = self.service.my_plates(&driver);
        Ok(Response::new(pb::ListMyPlatesResponse {
            plates: plates.iter().map(pb_link).collect(),
        }))
    }

    async fn list_my_sessions(
        &self,
        request: Request<pb::ListMySessionsRequest>,
    ) -> Reply<pb::ListMySessionsResponse> {
        let driver = self.driver(&request, "list their sessions")?;
        let r = request.get_ref();
        let size = convert::page_size(r.page_size, 100, 500)?;
        let token = convert::page_token_in(&r.page_token)?;
        let (page, next) = self
            .service
            .my_sessions(&driver, size, token.as_deref())
            .await?;
        let caller = Caller::Driver(driver);
        Ok(Response::new(pb::ListMySessionsResponse {
            sessions: page.iter().map(|s| pb_session(s, &caller)).collect(),
            next_page_token: convert::page_token_out(next),
        }))
    }

    async fn get_session(
        &self,
        request: Request<pb::GetSessionRequest>,
    ) -> Reply<pb::GetSessionResponse> {
        let caller = self.any_caller(&request)?;
        let id = SessionId::parse(&request.get_ref().id).map_err(|e| e.in_field("id"))?;
        let session = self.service.get_session(&caller, &id).await?;
        Ok(Response::new(pb::GetSessionResponse {
            session: Some(pb_session(&session, &caller)),
        }))
    }

    async fn get_wallet(
        &self,
        request: Request<pb::GetWalletRequest>,
    ) -> Reply<pb::GetWalletResponse> {
        let driver = self.driver(&request, "read their wallet")?;
        let view = self.service.wallet(&driver).await?;
        Ok(Response::new(pb::GetWalletResponse {
            balance_minor: view.wallet.balance_minor,
            currency: view.wallet.currency.clone(),
            overdraft_minor: view.overdraft_minor,
            entries: view.entries.iter().map(pb_entry).collect(),
            arrears_minor: view.arrears_minor,
        }))
    }

    async fn top_up(&self, request: Request<pb::TopUpRequest>) -> Reply<pb::TopUpResponse> {
        let driver = self.driver(&request, "top up their wallet")?;
        let r = request.get_ref();
        let key = convert::idempotency_key(&r.idempotency_key)?;
        let (entry, balance) = self.service.top_up(&driver, r.amount_minor, &key).await?;
        Ok(Response::new(pb::TopUpResponse {
            entry: Some(pb_entry(&entry)),
            balance_minor: balance,
        }))
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Reply<pb::ListSessionsResponse> {
        let operator = self.operator(&request, "list sessions")?;
        let r = request.get_ref();
        let filter = SessionFilter {
            car_park: match r.car_park_id.as_str() {
                "" => None,
                id => Some(convert::car_park_id(id, "car_park_id")?),
            },
            state: state_filter(r.state)?,
            from: r.from.as_ref().map(|t| timestamp(t, "from")).transpose()?,
            to: r.to.as_ref().map(|t| timestamp(t, "to")).transpose()?,
        };
        let size = convert::page_size(r.page_size, 100, 500)?;
        let token = convert::page_token_in(&r.page_token)?;
        let (page, next) = self
            .service
            .list_sessions(&operator, filter, size, token.as_deref())
            .await?;
        let caller = Caller::Operator(operator);
        Ok(Response::new(pb::ListSessionsResponse {
            sessions: page.iter().map(|s| pb_session(s, &caller)).collect(),
            next_page_token: convert::page_token_out(next),
        }))
    }

    async fn get_settlement(
        &self,
        request: Request<pb::GetSettlementRequest>,
    ) -> Reply<pb::GetSettlementResponse> {
        let operator = self.operator(&request, "settle a day")?;
        let r = request.get_ref();
        let day: jiff::civil::Date = r
            .day
            .parse()
            .map_err(|_| Error::invalid("day", "must be a date, YYYY-MM-DD"))?;
        let of = (!r.operator.is_empty()).then_some(r.operator.as_str());
        let s = self.service.settlement(&operator, of, day).await?;
        Ok(Response::new(pb::GetSettlementResponse {
            operator: operator.to_string(),
            day: day.to_string(),
            currency: s.currency,
            sessions_paid: s.sessions_paid,
            sessions_unpaid: s.sessions_unpaid,
            sessions_free: s.sessions_free,
            sessions_voided: s.sessions_voided,
            revenue_minor: s.revenue_minor,
            refunds_minor: s.refunds_minor,
            arrears_minor: s.arrears_minor,
            barrier_minor: s.barrier_minor,
            pending_minor: s.pending_minor,
        }))
    }
}
