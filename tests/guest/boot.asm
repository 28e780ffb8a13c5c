; A BIOS boot sector for tests/test_vm_boot.py (nasm -f bin).
;
; Reads the boot disk's LBA 1 (CHS 0/0/2) and prints its first 16 bytes on COM1
; as "READ:<16 bytes>\n"; then writes LBA 2 (CHS 0/0/3) with "GUESTWROTE"
; repeated over 512 bytes and prints "WROTE\n". A failed int 13h call prints
; "READFAIL xx\n" or "WRITEFAIL xx\n" (xx: the BIOS status in AH, in hex).
; Then it exits QEMU through isa-debug-exit (iobase 0xf4) with EXIT_CODE, so
; QEMU's status is EXIT_CODE * 2 + 1; without that device it halts for good.

bits 16
org 0x7c00

COM1        equ 0x3f8
DEBUG_EXIT  equ 0xf4
EXIT_CODE   equ 0x21            ; QEMU exits with status 0x43 (67)
READ_BUF    equ 0x7e00
WRITE_BUF   equ 0x8000

start:
    cli
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7c00
    jmp 0:main                  ; CS:IP = 0:7c00 whatever the BIOS used

main:
    sti
    cld
    mov [drive], dl             ; the boot drive, as the BIOS passed it
    call serial_init

    mov ax, 0x0201              ; AH=02h read, AL=1 sector
    mov cx, 0x0002              ; cylinder 0, sector 2
    xor dh, dh                  ; head 0
    mov dl, [drive]
    mov bx, READ_BUF            ; ES:BX
    int 0x13
    mov si, msg_readfail
    jc fail

    mov si, msg_read
    call puts
    mov si, READ_BUF
    mov cx, 16
.print:
    lodsb
    call putc
    loop .print
    mov al, 10
    call putc

    mov di, WRITE_BUF           ; 512 bytes of "GUESTWROTE" repeated
    mov cx, 512
    xor bx, bx
.fill:
    mov al, [tag + bx]
    stosb
    inc bx
    cmp bx, TAG_LEN
    jb .next
    xor bx, bx
.next:
    loop .fill

    mov ax, 0x0301              ; AH=03h write, AL=1 sector
    mov cx, 0x0003              ; cylinder 0, sector 3
    xor dh, dh
    mov dl, [drive]
    mov bx, WRITE_BUF
    int 0x13
    mov si, msg_writefail
    jc fail
    mov si, msg_wrote
    call puts
    jmp exit

fail:                           ; SI: the message; AH: the BIOS status
    mov bl, ah
    call puts
    mov al, bl
    shr al, 4
    call puthex
    mov al, bl
    call puthex
    mov al, 10
    call putc

exit:
    mov al, EXIT_CODE
    out DEBUG_EXIT, al
.halt:
    cli
    hlt
    jmp .halt

serial_init:                    ; 115200 baud, 8N1, FIFOs on
    mov dx, COM1 + 1
    xor al, al
    out dx, al                  ; no interrupts
    mov dx, COM1 + 3
    mov al, 0x80
    out dx, al                  ; DLAB on
    mov dx, COM1
    mov al, 1
    out dx, al                  ; divisor low
    mov dx, COM1 + 1
    xor al, al
    out dx, al                  ; divisor high
    mov dx, COM1 + 3
    mov al, 0x03
    out dx, al                  ; 8N1, DLAB off
    mov dx, COM1 + 2
    mov al, 0xc7
    out dx, al                  ; FIFOs on and cleared
    mov dx, COM1 + 4
    mov al, 0x03
    out dx, al                  ; DTR, RTS
    ret

putc:                           ; AL: the byte; keeps every register
    push dx
    push ax
    mov dx, COM1 + 5
.wait:
    in al, dx
    test al, 0x20               ; transmit holding register empty
    jz .wait
    pop ax
    mov dx, COM1
    out dx, al
    pop dx
    ret

puts:                           ; SI: a NUL-terminated string
    lodsb
    test al, al
    jz .done
    call putc
    jmp puts
.done:
    ret

puthex:                         ; the low nibble of AL, as a hex digit
    and al, 0x0f
    add al, '0'
    cmp al, '9'
    jbe .digit
    add al, 'A' - '9' - 1
.digit:
    jmp putc

drive:          db 0
tag:            db "GUESTWROTE"
TAG_LEN         equ $ - tag
msg_read:       db "READ:", 0
msg_wrote:      db "WROTE", 10, 0
msg_readfail:   db "READFAIL ", 0
msg_writefail:  db "WRITEFAIL ", 0

    times 510 - ($ - $$) db 0
    dw 0xaa55
