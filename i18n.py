"""Every word the portal shows or mails, in English and Spanish.

`MESSAGES[key] = (english, spanish)`; placeholders use `str.format` names. A test
checks that both languages carry the same placeholders for every key. A message
that counts something is in `PLURALS` instead, with each language's singular and
plural form (CLDR's "one" and "other"); `translate` serves both. Dates and
relative times ("5 minutes ago") are formatted here too, because they are words.
"""

import time

LANGUAGES = ("en", "es")
DEFAULT_LANGUAGE = "en"
LANGUAGE_NAMES = {"en": "English", "es": "Español"}

MESSAGES = {
    # Layout
    "portal_title": ("Support portal", "Portal de soporte"),
    "skip_to_content": ("Skip to content", "Saltar al contenido"),
    "language": ("Language", "Idioma"),
    "change_language": ("Change", "Cambiar"),
    "nav_tickets": ("My tickets", "Mis tickets"),
    "nav_new_ticket": ("New ticket", "Nuevo ticket"),
    "sign_out": ("Sign out", "Cerrar sesión"),
    "signed_in_as": ("Signed in as {email}", "Sesión iniciada como {email}"),
    "logo_alt": ("Home", "Inicio"),
    # Sign-in
    "signin_heading": ("Sign in to see your tickets", "Inicia sesión para ver tus tickets"),
    "signin_intro": ("Enter the e-mail address you use with our support team. We will send you a link to sign in, no password needed.",
                     "Escribe la dirección de correo que usas con nuestro equipo de soporte. Te enviaremos un enlace para entrar, sin contraseña."),
    "email_label": ("E-mail address", "Correo electrónico"),
    "send_link": ("Send me a sign-in link", "Enviarme un enlace de acceso"),
    "link_sent_heading": ("Check your e-mail", "Revisa tu correo"),
    "link_sent_hint": ("No e-mail after a few minutes? Check your spam folder or try again.",
                       "¿No llega el correo en unos minutos? Revisa la carpeta de spam o vuelve a intentarlo."),
    "try_another_address": ("Use another address", "Usar otra dirección"),
    "error_email_required": ("Please enter your e-mail address.", "Escribe tu dirección de correo."),
    "error_email_invalid": ("That does not look like an e-mail address. Please check it.",
                            "Eso no parece una dirección de correo. Revísala, por favor."),
    "error_rate_limited": ("Too many sign-in requests. Please wait a few minutes and try again.",
                           "Demasiadas solicitudes de acceso. Espera unos minutos y vuelve a intentarlo."),
    "error_mail_failed": ("We could not send the e-mail right now. Please try again in a few minutes.",
                          "No hemos podido enviar el correo ahora mismo. Vuelve a intentarlo en unos minutos."),
    "signin_required": ("Please sign in to continue.", "Inicia sesión para continuar."),
    "session_expired": ("Your session has ended. Please sign in again.", "Tu sesión ha terminado. Vuelve a iniciar sesión."),
    "signed_out": ("You have signed out.", "Has cerrado la sesión."),
    "draft_label": ("Your text was not sent yet. Copy it, sign in, and paste it again:",
                    "Tu texto aún no se ha enviado. Cópialo, inicia sesión y vuelve a pegarlo:"),
    "draft_restored": ("What you typed before signing in again is back in the form: check it and send it.",
                       "Lo que escribiste antes de volver a entrar está de nuevo en el formulario: revísalo y envíalo."),
    # Verify
    "verify_heading": ("Sign in to the support portal", "Entrar al portal de soporte"),
    "verify_body": ("Press the button to finish signing in as {email}.", "Pulsa el botón para terminar de entrar como {email}."),
    "verify_button": ("Sign in", "Entrar"),
    "link_invalid_heading": ("This sign-in link no longer works", "Este enlace de acceso ya no funciona"),
    "request_new_link": ("Get a new link", "Pedir un enlace nuevo"),
    "link_used_body": ("This link was already used: each link works once, and signing in also ends any older ones. Ask for a new one below.",
                       "Este enlace ya se ha usado: cada enlace funciona una sola vez, y al entrar dejan de funcionar también los anteriores. Pide uno nuevo aquí abajo."),
    "send_new_link": ("Send me a new link", "Enviarme un enlace nuevo"),
    "already_signed_in_heading": ("You're already signed in", "Ya has iniciado sesión"),
    "already_signed_in_body": ("This sign-in link is not needed any more: you are signed in as {email}.",
                               "Este enlace de acceso ya no hace falta: has iniciado sesión como {email}."),
    # Sign-in code (the mail's code, typed into the browser that asked)
    "code_label": ("Code from the e-mail", "Código del correo"),
    "code_button": ("Sign in with the code", "Entrar con el código"),
    # Mail
    "mail_subject": ("Your sign-in link", "Tu enlace de acceso"),
    "mail_greeting": ("Hello {name},", "Hola, {name}:"),
    "mail_greeting_anonymous": ("Hello,", "Hola:"),
    "mail_button": ("Sign in to the support portal", "Entrar al portal de soporte"),
    "mail_ignore": ("If you did not ask for this, you can ignore this e-mail: nobody can sign in without the link.",
                    "Si no lo has pedido tú, ignora este correo: nadie puede entrar sin el enlace."),
    "mail_code": ("Or enter this code on the sign-in page: {code}", "O escribe este código en la página de acceso: {code}"),
    "mail_code_intro": ("Or enter this code on the sign-in page:", "O escribe este código en la página de acceso:"),
    "mail_ignore_code": ("If you did not ask for this, you can ignore this e-mail: nobody can sign in without the link or the code.",
                         "Si no lo has pedido tú, ignora este correo: nadie puede entrar sin el enlace o el código."),
    # Reply mail
    "reply_mail_subject": ("New reply: {title} (ticket #{id})", "Nueva respuesta: {title} (ticket n.º {id})"),
    "reply_mail_intro": ("Our support team answered your ticket “{title}”:",
                         "Nuestro equipo de soporte ha respondido a tu ticket «{title}»:"),
    "reply_mail_cut": ("Read the rest in the portal.", "Lee el resto en el portal."),
    "reply_mail_link_intro": ("Read the whole conversation and answer in the support portal:",
                              "Lee toda la conversación y responde en el portal de soporte:"),
    "reply_mail_button": ("Read and answer", "Leer y responder"),
    "reply_mail_footer": ("You get this e-mail because you have a ticket with us. Replies to this e-mail are not read: please answer in the portal.",
                          "Recibes este correo porque tienes un ticket con nosotros. Las respuestas a este correo no se leen: responde en el portal."),
    # Dashboard
    "tickets_heading": ("My tickets", "Mis tickets"),
    "no_tickets": ("You have no tickets yet.", "Todavía no tienes tickets."),
    "no_tickets_hint": ("Need help? Open a ticket and our team will answer here.",
                        "¿Necesitas ayuda? Abre un ticket y nuestro equipo te responderá aquí."),
    "ticket_number": ("Ticket #{id}", "Ticket n.º {id}"),
    "filter_status_label": ("Show tickets", "Mostrar tickets"),
    "status_group_open": ("Open", "Abiertos"),
    "status_group_resolved": ("Closed", "Cerrados"),
    "status_group_all": ("All", "Todos"),
    "search_label": ("Search in subjects", "Buscar en los asuntos"),
    "search_button": ("Search", "Buscar"),
    "no_matches": ("No ticket subject contains “{q}”.", "Ningún asunto de ticket contiene «{q}»."),
    "no_tickets_in_group": ("No tickets here.", "No hay tickets aquí."),
    "clear_filter": ("Show all my tickets", "Mostrar todos mis tickets"),
    "new_reply": ("New reply", "Nueva respuesta"),
    "waiting_on_you": ("Waiting for your reply", "Esperando tu respuesta"),
    "pagination_label": ("Pages", "Páginas"),
    "previous_page": ("Previous", "Anterior"),
    "next_page": ("Next", "Siguiente"),
    "page_of": ("Page {page} of {pages}", "Página {page} de {pages}"),
    "last_activity": ("Last activity {when}", "Última actividad {when}"),
    "column_subject": ("Subject", "Asunto"),
    "column_status": ("Status", "Estado"),
    "column_activity": ("Last activity", "Última actividad"),
    # Status badges say what a status means to the customer, not Chatwoot's word for it
    # (that stays in the badge's title, for talking to support). An open or pending
    # ticket the agent answered last shows "waiting_on_you" instead.
    "status_open": ("We're on it", "Estamos en ello"),
    "status_pending": ("We're on it", "Estamos en ello"),
    "status_resolved": ("Closed", "Cerrado"),
    "status_snoozed": ("On hold", "En espera"),
    "status_snoozed_until": ("On hold until {when}", "En espera hasta el {when}"),
    "status_in_chatwoot": ("Chatwoot status: {status}", "Estado en Chatwoot: {status}"),
    "cancelled_by_you": ("Cancelled by you on {when}", "Cancelado por ti el {when}"),
    # Times within a week read as words (see relative_time); "ago" counts are in PLURALS.
    "time_just_now": ("just now", "ahora mismo"),
    "time_yesterday": ("yesterday", "ayer"),
    # New ticket
    "new_ticket_heading": ("Open a new ticket", "Abrir un ticket nuevo"),
    "subject_label": ("Subject", "Asunto"),
    "subject_hint": ("A few words about the problem.", "Unas palabras sobre el problema."),
    "message_label": ("Message", "Mensaje"),
    "message_hint": ("Tell us what happened and what you expected.", "Cuéntanos qué ha pasado y qué esperabas."),
    "create_button": ("Send ticket", "Enviar ticket"),
    "cancel_link": ("Back", "Volver"),
    "error_subject_required": ("Please write a subject.", "Escribe un asunto."),
    "error_message_required": ("Please write a message.", "Escribe un mensaje."),
    "ticket_created": ("Your ticket was created. We will answer here soon.", "Tu ticket se ha creado. Te responderemos aquí pronto."),
    # Priority: the new-ticket form's choices, which are also the badge of a ticket
    # that has one (what was chosen is what is shown)
    "priority_label": ("Priority", "Prioridad"),
    "priority_hint": ("Optional. How urgent is this for you?", "Opcional. ¿Qué urgencia tiene para ti?"),
    "priority_none": ("No priority", "Sin prioridad"),
    "priority_low": ("Low priority", "Prioridad baja"),
    "priority_medium": ("Medium priority", "Prioridad media"),
    "priority_high": ("High priority", "Prioridad alta"),
    "priority_urgent": ("Urgent priority", "Prioridad urgente"),
    "error_priority_invalid": ("Please choose one of the listed priorities.", "Elige una de las prioridades de la lista."),
    "ticket_created_priority_failed": ("Your ticket was created, but we could not set its priority. We will still answer here soon.",
                                       "Tu ticket se ha creado, pero no hemos podido fijar su prioridad. Aun así, te responderemos aquí pronto."),
    # Ticket page
    "back_to_tickets": ("All tickets", "Todos los tickets"),
    "opened_on": ("Opened {when}", "Abierto el {when}"),
    "you": ("You", "Tú"),
    "support_team": ("Support team", "Equipo de soporte"),
    "attachment": ("Attachment: {name}", "Adjunto: {name}"),
    "attachments_of_message": ("Files", "Archivos"),
    "image_alt": ("Image {name}", "Imagen {name}"),
    "files_label": ("Attach files (optional)", "Adjuntar archivos (opcional)"),
    "files_choose_again": ("Please choose the files again: for your safety, the browser does not keep them when a form comes back.",
                           "Vuelve a elegir los archivos: por seguridad, el navegador no los conserva cuando el formulario vuelve."),
    "upload_too_large": ("“{name}” is larger than {mb} MB.", "«{name}» ocupa más de {mb} MB."),
    "upload_empty": ("“{name}” is empty.", "«{name}» está vacío."),
    "upload_type": ("“{name}” is not a kind of file we accept (images, PDF, text, Office documents or zip).",
                    "«{name}» no es un tipo de archivo que aceptemos (imágenes, PDF, texto, documentos de Office o zip)."),
    "error_reply_empty": ("Please write a message or attach a file.", "Escribe un mensaje o adjunta un archivo."),
    "no_messages": ("No messages yet.", "Todavía no hay mensajes."),
    "reply_heading": ("Reply", "Responder"),
    "reply_label": ("Your reply", "Tu respuesta"),
    "reply_button": ("Send reply", "Enviar respuesta"),
    "reply_reopens": ("This ticket is closed. Sending a reply will reopen it.",
                      "Este ticket está cerrado. Si envías una respuesta, se volverá a abrir."),
    "reply_by_email": ("This ticket was opened by e-mail. To add to it, reply to the last e-mail you received from us.",
                       "Este ticket se abrió por correo. Para añadir algo, responde al último correo que te enviamos."),
    "reply_elsewhere": ("This conversation started in another channel. To add to it, answer there, where you wrote to us first.",
                        "Esta conversación empezó en otro canal. Para añadir algo, responde allí, donde nos escribiste primero."),
    "reply_sent": ("Your reply was sent.", "Tu respuesta se ha enviado."),
    "reply_sent_reopened": ("Your reply was sent and the ticket is open again.", "Tu respuesta se ha enviado y el ticket vuelve a estar abierto."),
    "cancel_heading": ("Cancel this ticket", "Cancelar este ticket"),
    "cancel_summary": ("Cancel ticket…", "Cancelar ticket…"),
    "cancel_explain": ("Cancelling closes the ticket. You can reopen it later by replying.",
                       "Al cancelarlo, el ticket se cierra. Puedes reabrirlo más tarde respondiendo."),
    "cancel_confirm": ("Yes, cancel this ticket", "Sí, cancelar este ticket"),
    "ticket_cancelled": ("Your ticket was cancelled.", "Tu ticket se ha cancelado."),
    "ticket_already_resolved": ("This ticket was already closed.", "Este ticket ya estaba cerrado."),
    # Rating (Chatwoot's CSAT survey): words beside every number, never stars alone
    "rating_heading": ("Your rating", "Tu valoración"),
    "rating_legend": ("How satisfied are you with our support on this ticket?",
                      "¿Cómo de satisfecho estás con nuestra atención en este ticket?"),
    "rating_1": ("1 – Very dissatisfied", "1 – Muy insatisfecho"),
    "rating_2": ("2 – Dissatisfied", "2 – Insatisfecho"),
    "rating_3": ("3 – Neither satisfied nor dissatisfied", "3 – Ni satisfecho ni insatisfecho"),
    "rating_4": ("4 – Satisfied", "4 – Satisfecho"),
    "rating_5": ("5 – Very satisfied", "5 – Muy satisfecho"),
    "rating_feedback_label": ("Comment (optional)", "Comentario (opcional)"),
    "rating_button": ("Send rating", "Enviar valoración"),
    "rating_given": ("You rated this {rating} out of 5.", "Lo valoraste con un {rating} de 5."),
    "rating_your_comment": ("Your comment:", "Tu comentario:"),
    "rating_change": ("Change your rating", "Cambiar tu valoración"),
    "rating_saved": ("Thank you for your rating.", "Gracias por tu valoración."),
    "rating_closed": ("Ratings can be given within 14 days of our survey, and that time has passed.",
                      "Las valoraciones se pueden dar en los 14 días siguientes a nuestra encuesta, y ese plazo ya ha pasado."),
    "rating_no_survey": ("There is no survey on this ticket, so it cannot be rated.",
                         "Este ticket no tiene ninguna encuesta, así que no se puede valorar."),
    "rating_comment_not_sent": ("Your comment was not sent:", "Tu comentario no se ha enviado:"),
    "error_rating_invalid": ("Please choose a rating from 1 to 5.", "Elige una valoración del 1 al 5."),
    # Errors
    "error_heading": ("Something went wrong", "Algo ha fallado"),
    "error_not_found_heading": ("Page not found", "Página no encontrada"),
    "error_not_found": ("There is no page at this address. Please check the link.",
                        "No hay ninguna página en esta dirección. Revisa el enlace."),
    # A ticket that is missing and someone else's answer alike (Portal.check_owner).
    "error_ticket_not_found_heading": ("Ticket not found", "Ticket no encontrado"),
    "error_ticket_not_found": ("This ticket does not exist or belongs to another account.",
                               "Este ticket no existe o pertenece a otra cuenta."),
    "error_file_not_found_heading": ("File not found", "Archivo no encontrado"),
    "error_file_not_found": ("This file does not exist or is not attached to this ticket.",
                             "Este archivo no existe o no está adjunto a este ticket."),
    "error_method": ("This page cannot be used that way.", "Esta página no se puede usar así."),
    "error_too_large_heading": ("That was too much text", "Demasiado texto"),
    "error_too_large": ("What you sent is larger than we accept. Please shorten it and try again.",
                        "Lo que has enviado es más grande de lo que aceptamos. Acórtalo y vuelve a intentarlo."),
    "error_csrf_heading": ("This form has expired", "Este formulario ha caducado"),
    "form_reloaded": ("For your security the form had to be reloaded: check it and send it again.",
                      "Por tu seguridad hemos tenido que recargar el formulario: revísalo y vuelve a enviarlo."),
    "form_too_large_heading": ("That was too large to send", "Era demasiado grande para enviarlo"),
    "form_too_large": ("What you sent is larger than we accept, so nothing was sent. Your text is below: shorten it, or choose fewer or smaller files, and send it again.",
                       "Lo que has enviado es más grande de lo que aceptamos, así que no se ha enviado nada. Tu texto está aquí abajo: acórtalo, o elige menos archivos o más pequeños, y vuelve a enviarlo."),
    "error_csrf": ("For your security, the form could not be accepted. Please go back, reload the page and try again.",
                   "Por tu seguridad, no hemos podido aceptar el formulario. Vuelve atrás, recarga la página e inténtalo de nuevo."),
    "error_unavailable_heading": ("Our support system is not answering", "Nuestro sistema de soporte no responde"),
    "error_unavailable": ("We could not reach our support system just now. Nothing you typed is lost: it is below, ready to send again in a moment.",
                          "No hemos podido contactar con nuestro sistema de soporte. No has perdido nada de lo escrito: está aquí abajo, listo para enviarlo de nuevo en un momento."),
    "error_unavailable_page": ("We could not reach our support system just now. Please try again in a moment.",
                               "No hemos podido contactar con nuestro sistema de soporte. Vuelve a intentarlo en un momento."),
    "error_rejected": ("Our support system did not accept this. Please check what you wrote and try again.",
                       "Nuestro sistema de soporte no lo ha aceptado. Revisa lo que has escrito e inténtalo de nuevo."),
    "error_internal": ("An unexpected error happened on our side. Please try again.",
                       "Ha ocurrido un error inesperado por nuestra parte. Vuelve a intentarlo."),
    "try_again": ("Try again", "Reintentar"),
    "go_home": ("Go to my tickets", "Ir a mis tickets"),
    "go_signin": ("Go to sign-in", "Ir al inicio de sesión"),
}

# Messages that count something: `PLURALS[key] = (count placeholder, (english one,
# english other), (spanish one, spanish other))`, the forms CLDR names for both
# languages ("1 minute", "5 minutes"). `translate` picks the form from the value of
# the count placeholder, so callers pass it like any other value.
PLURALS = {
    # Sign-in
    "link_sent_body": ("minutes",
                       ("If {email} belongs to one of our customers, a sign-in link is on its way. It works once and expires in {minutes} minute.",
                        "If {email} belongs to one of our customers, a sign-in link is on its way. It works once and expires in {minutes} minutes."),
                       ("Si {email} pertenece a uno de nuestros clientes, te hemos enviado un enlace de acceso. Funciona una sola vez y caduca en {minutes} minuto.",
                        "Si {email} pertenece a uno de nuestros clientes, te hemos enviado un enlace de acceso. Funciona una sola vez y caduca en {minutes} minutos.")),
    "link_invalid_body": ("minutes",
                          ("Links work once and expire after {minutes} minute. Ask for a new one below.",
                           "Links work once and expire after {minutes} minutes. Ask for a new one below."),
                          ("Los enlaces funcionan una vez y caducan al cabo de {minutes} minuto. Pide uno nuevo aquí abajo.",
                           "Los enlaces funcionan una vez y caducan a los {minutes} minutos. Pide uno nuevo aquí abajo.")),
    "link_expired_body": ("minutes",
                          ("This link has expired: links work for {minutes} minute. Ask for a new one below.",
                           "This link has expired: links work for {minutes} minutes. Ask for a new one below."),
                          ("Este enlace ha caducado: los enlaces funcionan durante {minutes} minuto. Pide uno nuevo aquí abajo.",
                           "Este enlace ha caducado: los enlaces funcionan durante {minutes} minutos. Pide uno nuevo aquí abajo.")),
    "link_locked_body": ("attempts",
                         ("This link was cancelled because a wrong code was typed {attempts} time. Ask for a new one below.",
                          "This link was cancelled because a wrong code was typed {attempts} times. Ask for a new one below."),
                         ("Este enlace se ha anulado porque se escribió un código incorrecto {attempts} vez. Pide uno nuevo aquí abajo.",
                          "Este enlace se ha anulado porque se escribió un código incorrecto {attempts} veces. Pide uno nuevo aquí abajo.")),
    "code_hint": ("attempts",
                  ("Reading your e-mail on another device? Type its 6-digit code here to sign in on this one. After {attempts} wrong code, the code and the link stop working and you need a new e-mail.",
                   "Reading your e-mail on another device? Type its 6-digit code here to sign in on this one. After {attempts} wrong codes, the code and the link stop working and you need a new e-mail."),
                  ("¿Lees el correo en otro dispositivo? Escribe aquí su código de 6 cifras para entrar en este. Tras {attempts} código incorrecto, el código y el enlace dejan de funcionar y necesitarás un correo nuevo.",
                   "¿Lees el correo en otro dispositivo? Escribe aquí su código de 6 cifras para entrar en este. Tras {attempts} códigos incorrectos, el código y el enlace dejan de funcionar y necesitarás un correo nuevo.")),
    "error_code_wrong": ("attempts",
                         ("That code does not work: it is wrong, has expired or was already used. After {attempts} wrong code, the code and the link stop working: then ask for a new e-mail.",
                          "That code does not work: it is wrong, has expired or was already used. After {attempts} wrong codes, the code and the link stop working: then ask for a new e-mail."),
                         ("Ese código no funciona: es incorrecto, ha caducado o ya se ha usado. Tras {attempts} código incorrecto, el código y el enlace dejan de funcionar: entonces pide un correo nuevo.",
                          "Ese código no funciona: es incorrecto, ha caducado o ya se ha usado. Tras {attempts} códigos incorrectos, el código y el enlace dejan de funcionar: entonces pide un correo nuevo.")),
    "mail_body": ("minutes",
                  ("Use this link to sign in to the support portal. It works once and expires in {minutes} minute.",
                   "Use this link to sign in to the support portal. It works once and expires in {minutes} minutes."),
                  ("Usa este enlace para entrar al portal de soporte. Funciona una sola vez y caduca en {minutes} minuto.",
                   "Usa este enlace para entrar al portal de soporte. Funciona una sola vez y caduca en {minutes} minutos.")),
    "draft_kept": ("minutes",
                   ("Or sign in again in this browser within {minutes} minute: it will be back in the form for you.",
                    "Or sign in again in this browser within {minutes} minutes: it will be back in the form for you."),
                   ("O vuelve a entrar en este navegador en el próximo {minutes} minuto: lo encontrarás de nuevo en el formulario.",
                    "O vuelve a entrar en este navegador en los próximos {minutes} minutos: lo encontrarás de nuevo en el formulario.")),
    # Files and form limits
    "files_hint": ("count",
                   ("Up to {count} file of {mb} MB: images, PDF, text, Office documents or zip.",
                    "Up to {count} files, {mb} MB each: images, PDF, text, Office documents or zip."),
                   ("Hasta {count} archivo de {mb} MB: imágenes, PDF, texto, documentos de Office o zip.",
                    "Hasta {count} archivos de {mb} MB cada uno: imágenes, PDF, texto, documentos de Office o zip.")),
    "upload_too_many": ("count",
                        ("You can attach at most {count} file at a time.", "You can attach at most {count} files at a time."),
                        ("Puedes adjuntar como máximo {count} archivo a la vez.", "Puedes adjuntar como máximo {count} archivos a la vez.")),
    "error_subject_too_long": ("limit",
                               ("The subject is too long: at most {limit} character.", "The subject is too long: at most {limit} characters."),
                               ("El asunto es demasiado largo: como máximo {limit} carácter.", "El asunto es demasiado largo: como máximo {limit} caracteres.")),
    "error_message_too_long": ("limit",
                               ("The message is too long: at most {limit} character.", "The message is too long: at most {limit} characters."),
                               ("El mensaje es demasiado largo: como máximo {limit} carácter.", "El mensaje es demasiado largo: como máximo {limit} caracteres.")),
    "error_feedback_too_long": ("limit",
                                ("The comment is too long: at most {limit} character.", "The comment is too long: at most {limit} characters."),
                                ("El comentario es demasiado largo: como máximo {limit} carácter.", "El comentario es demasiado largo: como máximo {limit} caracteres.")),
    # Relative times (relative_time)
    "time_minutes_ago": ("count", ("{count} minute ago", "{count} minutes ago"), ("hace {count} minuto", "hace {count} minutos")),
    "time_hours_ago": ("count", ("{count} hour ago", "{count} hours ago"), ("hace {count} hora", "hace {count} horas")),
    "time_days_ago": ("count", ("{count} day ago", "{count} days ago"), ("hace {count} día", "hace {count} días")),
}

# CLDR's cardinal plural rules (unicode.org/cldr, "Language Plural Rules"): English
# "one" is i = 1 and v = 0, Spanish "one" is n = 1; everything else is "other". The
# portal only counts whole numbers, where both come down to "exactly 1". (Spanish
# "many" is for millions written in words, "1 millón de", which the portal never shows.)
PLURAL_RULES = {
    "en": lambda count: "one" if count == 1 else "other",
    "es": lambda count: "one" if count == 1 else "other",
}
PLURAL_FORMS = ("one", "other")

# Times within this many days read as words ("3 days ago"), older ones as a date.
RELATIVE_DAYS = 7
MINUTE, HOUR, DAY = 60, 3600, 86400

MONTHS = {
    "en": ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
    "es": ("ene", "feb", "mar", "abr", "may", "jun", "jul", "ago", "sept", "oct", "nov", "dic"),
}


def choose(lang):
    """A supported language code for any input; English when unsure."""
    return lang if lang in LANGUAGES else DEFAULT_LANGUAGE


def from_accept_language(header):
    """The first supported language a browser asks for, else English."""
    for part in (header or "").split(","):
        code = part.split(";")[0].strip().lower()[:2]
        if code in LANGUAGES:
            return code
    return DEFAULT_LANGUAGE


def translate(lang, key, **values):
    if key in PLURALS:  # its count is one of the values: "1 minute", "5 minutes"
        return translate_plural(lang, key, values[PLURALS[key][0]], **values)
    text = MESSAGES[key][LANGUAGES.index(choose(lang))]
    return text.format(**values) if values else text


def translate_plural(lang, key, count, /, **values):
    """The form of a PLURALS message that fits `count`, with `count` filled in
    (positional-only, so a placeholder may be named `count` too)."""
    lang = choose(lang)
    name, *forms = PLURALS[key]
    text = forms[LANGUAGES.index(lang)][PLURAL_FORMS.index(PLURAL_RULES[lang](count))]
    return text.format(**{**values, name: count})


def format_time(lang, unix_seconds):
    """'25 Nov 2026, 16:33 UTC' / '25 nov 2026, 16:33 UTC'. Browsers with JS show local time."""
    when = time.gmtime(int(unix_seconds or 0))  # cheaper than datetime: once per message
    month = MONTHS[choose(lang)][when.tm_mon - 1]
    return f"{when.tm_mday} {month} {when.tm_year}, {when.tm_hour:02d}:{when.tm_min:02d} UTC"


def relative_time(lang, unix_seconds, now):
    """'just now', '5 minutes ago', '2 hours ago', 'yesterday', '3 days ago' (and
    'ahora mismo', 'hace 5 minutos', 'ayer'), counted from `now`; None for a time
    RELATIVE_DAYS or more ago, or more than a minute ahead (another clock's skew):
    those read as format_time's date.

    Under a day: minutes or hours. Beyond: calendar days in UTC, the zone of the
    dates shown beside them (the server does not know the reader's), so a message
    of the 28th reads "2 days ago" on the 30th whatever its hour.
    """
    age = int(now) - int(unix_seconds or 0)
    if age < -MINUTE or age >= RELATIVE_DAYS * DAY:
        return None
    if age < MINUTE:
        return translate(lang, "time_just_now")
    if age < HOUR:
        return translate_plural(lang, "time_minutes_ago", age // MINUTE)
    if age < DAY:
        return translate_plural(lang, "time_hours_ago", age // HOUR)
    days = int(now) // DAY - int(unix_seconds or 0) // DAY  # UTC dates: epoch days
    if days <= 1:
        return translate(lang, "time_yesterday")
    return translate_plural(lang, "time_days_ago", days)
